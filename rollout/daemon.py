"""The rollout controller as a long-running process (`corral rollout run --daemon`).

A Deployment runs one controller per fleet for ever: it idles while the store holds no
rollout (or only a finished one), runs a rollout as soon as one is started, and idles again
after Succeeded/RolledBack. It never exits on its own; SIGTERM ends it cleanly.

Every loop iteration touches a heartbeat file (idle or not); `corral rollout alive` checks
its age for the liveness probe. Errors reaching the loop (Kubernetes API, Prometheus, the
store) are logged with the exception and retried with exponential backoff; the next
successful tick resets the backoff.

Log lines are plain and timestamped (UTC), one per state change, so `kubectl logs` shows
the rollout as it moves.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, TextIO

from corral.cluster.spec.rollout import RolloutSpec
from corral.rollout.actuators import ActuatorError
from corral.rollout.controller import Controller
from corral.rollout.machine import Decision, Operator, RolloutState
from corral.rollout.store import RolloutDoc, RolloutStore

EXPECTED_ERRORS = (ActuatorError, OSError, RuntimeError, ValueError, LookupError)
"""Errors a tick may raise that are logged without a traceback (their message says what failed);
anything else is logged with its traceback. Both are retried."""


def touch(path: Path | None, now: float) -> None:
    """Set the heartbeat file's mtime to `now` (creating it and its folder)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (now, now))


def heartbeat_age(path: Path, now: float) -> float | None:
    """Seconds since the heartbeat file was last touched (None: no such file)."""
    try:
        return max(0.0, now - path.stat().st_mtime)
    except FileNotFoundError:
        return None


class LogLines:
    """Plain, timestamped log lines for a non-TTY stdout."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.time, repeat_s: float = 60.0):
        """The same error reported again within `repeat_s` is counted, not printed again."""
        self.stream, self.clock, self.repeat_s = stream, clock, repeat_s
        self._last_error: tuple[str, float] | None = None
        self._repeats = 0

    def __call__(self, message: str) -> None:
        t = self.clock()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        self.stream.write(f"{stamp} {message}\n")
        self.stream.flush()

    def decisions(self, doc_id: str, spec: RolloutSpec) -> Callable[[Decision, RolloutState], None]:
        """An `on_decision` hook: one line per state change (any decision but an unchanged hold)."""
        last: list[str] = []

        def hook(decision: Decision, state: RolloutState) -> None:
            key = f"{decision.operator.value}|{decision.reason}|{state.phase.value}"
            if decision.operator != Operator.HOLD or not last or last[-1] != key:
                self(describe(doc_id, spec, decision, state))
            last[:] = [key]

        return hook

    def error(self, exc: Exception) -> None:
        text, now = describe_error(exc), self.clock()
        if self._last_error is not None and self._last_error[0] == text and now - self._last_error[1] < self.repeat_s:
            self._repeats += 1
            return
        same = self._last_error is not None and self._last_error[0] == text
        if self._repeats and not same:
            self(f"error: the previous error occurred {self._repeats} more times")
        again = f" ({self._repeats} more times since the last report)" if self._repeats and same else ""
        self(f"error: {text}{again}")
        self._last_error, self._repeats = (text, now), 0


def describe(doc_id: str, spec: RolloutSpec, decision: Decision, state: RolloutState) -> str:
    """One line: rollout, phase, step, stage, weights, the decision and its gate verdicts."""
    weights = ",".join(f"{k}={v}" for k, v in sorted(state.desired_weights.items())) or "-"
    step = f"{state.step + 1}/{len(spec.steps)} ({spec.steps[state.step].weight}%)"
    line = (f"rollout {doc_id} phase={state.phase.value} step={step} stage={state.stage.value} "
            f"weights={weights} {decision.operator.value}: {decision.reason}")
    if decision.gates:
        line += " | gates: " + "; ".join(f"{g.gate}={g.verdict.value}" for g in decision.gates)
    return line


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    # kubernetes.client.ApiException carries status, reason and body in its message.
    expected = isinstance(exc, EXPECTED_ERRORS) or type(exc).__name__ == "ApiException"
    if not expected:
        text += "\n" + "".join(traceback.format_exception(exc)).rstrip()
    return text


class Daemon:
    """Idle -> run the stored rollout -> idle, until `stop` is set.

    `make_controller(doc, spec)` builds the controller for a newly seen rollout (its spec is
    the one stored with it); a rollout ticks every `controller.tick_s`, the store is polled
    every `idle_s` while idle. `stop.wait` is the only sleep, so SIGTERM (which sets `stop`)
    ends the loop at once. Backoff after an error doubles from `backoff_s[0]` up to `backoff_s[1]`
    (below the liveness probe's max age, so a retrying daemon still heartbeats)."""

    def __init__(self, store: RolloutStore, make_controller: Callable[[RolloutDoc, RolloutSpec], Controller],
                 log: Callable[[str], None], idle_s: float = 5.0,
                 heartbeat: Path | None = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.time, backoff_s: tuple[float, float] = (1.0, 60.0)):
        self.store, self.make_controller, self.log = store, make_controller, log
        self.idle_s, self.heartbeat = idle_s, heartbeat
        self.stop = stop or threading.Event()
        self.clock, self.backoff_s = clock, backoff_s
        self.failures = 0
        self._controller: Controller | None = None
        self._doc_id: str | None = None
        self._idle_reason: str | None = None

    def run(self) -> int:
        self.log("rollout controller started")
        while not self.stop.is_set():
            try:
                touch(self.heartbeat, self.clock())
                pause = self.step()
                self.failures = 0
            except Exception as exc:  # noqa: BLE001 - logged and retried: the daemon must stay up
                self.failures += 1
                pause = min(self.backoff_s[1], self.backoff_s[0] * 2 ** (self.failures - 1))
                self.log(f"error (attempt {self.failures}, retrying in {pause:g}s): {describe_error(exc)}")
            self.stop.wait(pause)
        self.log("rollout controller stopped")
        return 0

    def step(self) -> float:
        """One iteration; returns how long to wait before the next."""
        doc = self.store.load()
        if doc is None or doc.state.terminal:
            why = "no rollout stored" if doc is None else f"rollout {doc.id} {doc.state.phase.value}: {doc.state.reason}"
            if why != self._idle_reason:
                self.log(f"idle: {why}; waiting for `corral rollout start`")
                self._idle_reason = why
            return self.idle_s
        self._idle_reason = None
        if doc.id != self._doc_id or self._controller is None:
            spec = RolloutSpec.model_validate(doc.spec)
            self._controller = self.make_controller(doc, spec)
            self._doc_id = doc.id
            self.log(f"rollout {doc.id}: route {spec.route}: {spec.baseline} -> {spec.candidate}, "
                     f"steps {[s.weight for s in spec.steps]} ({doc.state.phase.value})")
        self._controller.tick()
        return self._controller.tick_s


def stop_on_sigterm(stop: threading.Event) -> None:
    """SIGTERM (Kubernetes stopping the pod) and SIGINT set `stop`; the loop ends after its current tick."""
    import signal

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def build_controller(spec: RolloutSpec, *, max_replicas: dict[str, int], actuator, store: RolloutStore,
                     prometheus_url: str, endpoint: str, prometheus_scope: dict[str, str] | None = None, api_key: str | None, base_dir: Path | None,
                     rollout_id: str | None = None, tick_s: float | None = None,
                     on_decision: Callable[[Decision, RolloutState], None] | None = None,
                     on_error: Callable[[Exception], None] | None = None,
                     heartbeat: Path | None = None) -> Controller:
    """A controller wired to Prometheus, the actuator, the store and (when the spec's quality
    gate is on) a golden-set runner against `endpoint` with `api_key`, which touches `heartbeat`
    after each prompt (a golden set on a large model can outlast the liveness probe's max age;
    one prompt is bounded by `quality.request_timeout_s`)."""
    from corral.rollout.metrics import PrometheusMetricSource
    from corral.rollout.quality import GoldenSetRunner, golden_rules, load_golden, resolve_golden_path
    from corral.serving.prometheus import PrometheusClient

    runner, rules = None, None
    if spec.quality.enabled:
        prompts = load_golden(resolve_golden_path(spec.quality.golden_set, base_dir))
        runner = GoldenSetRunner(endpoint, prompts, timeout_s=spec.quality.request_timeout_s, api_key=api_key,
                                 on_prompt=None if heartbeat is None else lambda: touch(heartbeat, time.time()))
        rules = golden_rules(prompts)
    return Controller(spec, max_replicas, PrometheusMetricSource(PrometheusClient(prometheus_url, scope=prometheus_scope)), actuator, store,
                      quality_runner=runner, on_decision=on_decision, on_error=on_error, rollout_id=rollout_id,
                      tick_s=tick_s, golden_rules=rules)
