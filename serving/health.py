"""Which arms are serving, as the ingress sees them (pure state; the ingress does the I/O).

The signal is the ingress's own requests: a server-side failure on an arm (an exception from
the arm, a 5xx answer or stream error event, no first response within the timeout) counts
against the arm at once, while Serve's deployment status reports a dead engine only after its
health-check period and failure threshold (Ray Serve `DeploymentConfig.health_check_period_s`,
default 10 s, in ray/serve/_private/config.py) and a restarting replica not at all until it is
replaced. `failures_to_eject` consecutive failures take the arm out; it comes back on the first
successful health probe (the arm's own `check_health`, i.e. the vLLM engine's), never on a
timer, so users are not sent back to an arm that is still restarting.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArmState:
    failures: int = 0
    """Consecutive server-side failures."""
    down_since: float | None = None
    """When the arm was taken out (monotonic seconds); None while it is up."""
    reason: str = ""
    """The failure that took it out."""


@dataclass
class ArmHealth:
    """Up/down per arm from request outcomes and probes. Time is passed in (monotonic seconds)."""

    failures_to_eject: int = 1
    arms: dict[str, ArmState] = field(default_factory=dict)

    def down(self) -> frozenset[str]:
        return frozenset(a for a, s in self.arms.items() if s.down_since is not None)

    def is_up(self, arm: str) -> bool:
        state = self.arms.get(arm)
        return state is None or state.down_since is None

    def failed(self, arm: str, now: float, reason: str) -> bool:
        """Record a server-side failure; True when this failure takes the arm out."""
        state = self.arms.setdefault(arm, ArmState())
        state.failures += 1
        if state.down_since is None and state.failures >= self.failures_to_eject:
            state.down_since, state.reason = now, reason
            return True
        return False

    def succeeded(self, arm: str) -> None:
        """A request on an up arm succeeded: its consecutive-failure count starts over."""
        state = self.arms.get(arm)
        if state is not None and state.down_since is None:
            state.failures = 0

    def recovered(self, arm: str, now: float) -> float | None:
        """A health probe succeeded: the arm is back. Returns how long it was out (None if it was up)."""
        state = self.arms.get(arm)
        if state is None or state.down_since is None:
            return None
        out_s = now - state.down_since
        self.arms[arm] = ArmState()
        return out_s
