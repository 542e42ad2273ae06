"""The policies the simulator drives, and Serve's controller path around them.

corral's own policy runs unchanged (`corral.autoscaler.policy.CorralAutoscalingPolicy`); Ray
Serve's default policy is Ray's own function; the oracle knows the whole workload in advance.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

from corral.autoscaler.policy import LAST_DECISION_KEY
from corral.autoscaler.sim.replica import LatencyCurve
from corral.autoscaler.sim.workload import Request
from corral.serving import _ray_compat

PolicyFn = Callable[[Any], tuple[float, dict]]


def serve_controller_step(policy: PolicyFn, ctx: Any, serve_config: Any, now: float) -> tuple[int, dict]:
    """What Serve's controller does with a policy's answer: Ray's own cold-start fast path,
    scaling factors and delay logic, then min/max bounds. Mirrors
    `ray.serve.autoscaling_policy._apply_autoscaling_config` (Ray 2.60), except that the
    simulated clock is handed to the delay logic (Ray's wrapper reads the wall clock)."""
    cold = _ray_compat.cold_start_replicas(ctx)
    if cold is not None:
        decided, state = cold, ctx.policy_state
    else:
        internal = _ray_compat.internal_policy_state(ctx.policy_state)
        desired, user_state = policy(ctx)
        desired = _ray_compat.apply_scaling_factors(desired, ctx.current_num_replicas, serve_config)
        if ctx.current_num_replicas == 0 and desired > 0:
            decided, state = desired, dict(user_state)
        else:
            decided, internal = _ray_compat.apply_delay_logic(max(0, desired), ctx.target_num_replicas,
                                                              serve_config, internal, _now=now)
            state = dict(user_state)
            state.update(internal)
    decided = math.ceil(decided)
    return min(max(decided, serve_config.min_replicas), serve_config.max_replicas), state


def ray_default_policy() -> PolicyFn:
    """Ray Serve's own default policy function (target ongoing requests), unchanged."""
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

    return replica_queue_length_autoscaling_policy


def serve_config(min_replicas: int, max_replicas: int, initial: int, target: float, upscale_delay_s: float,
                 downscale_delay_s: float, look_back_period_s: float = 20.0, policy: dict | None = None) -> Any:
    """A ray.serve.config.AutoscalingConfig, as Serve would hold it for the deployment."""
    from ray.serve.config import AutoscalingConfig

    kw: dict[str, Any] = dict(min_replicas=min_replicas, max_replicas=max_replicas, initial_replicas=initial,
              target_ongoing_requests=target, upscale_delay_s=upscale_delay_s,
              downscale_delay_s=downscale_delay_s, look_back_period_s=look_back_period_s)
    if policy:
        kw["policy"] = policy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoscalingConfig(**kw)


def ideal_concurrency(requests: list[Request], curve: LatencyCurve, batch: int, step_s: float, end_s: float) -> np.ndarray:
    """Requests in service at each `step_s` if every request ran at `batch` with no queueing."""
    grid = np.zeros(int(end_s / step_s) + 2)
    for r in requests:
        dur = curve.prefill(r.context_tokens) + (r.generated_tokens - 1) * curve.itl(batch)
        a, b = int(r.arrival_s / step_s), int((r.arrival_s + dur) / step_s)
        grid[a: b + 1] += 1
    return grid


class OraclePolicy:
    """Offline oracle: knows the whole workload. At each moment it holds exactly the replicas
    that the coming load needs at `target_ongoing` requests each (peak of the ideal
    in-service count over the next `cold_start_s + window_s`), so replicas are ready when
    load arrives and leave as soon as it passes. Run with Serve delays 0."""

    def __init__(self, requests: list[Request], curve: LatencyCurve, target_ongoing: float, cold_start_s: float,
                 window_s: float = 10.0, step_s: float = 1.0, headroom: float = 1.0):
        end = max((r.arrival_s for r in requests), default=0.0) + 600
        conc = ideal_concurrency(requests, curve, int(round(target_ongoing)), step_s, end)
        need = np.ceil(conc * headroom / target_ongoing - 1e-9)
        self.headroom = headroom
        ahead = int((cold_start_s + window_s) / step_s)
        # Running max over [i, i + ahead]: replicas must be asked for cold_start_s early.
        self.plan = np.array([need[i: i + ahead + 1].max() for i in range(len(need))])
        self.step_s = step_s

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        i = min(int(ctx.current_time / self.step_s), len(self.plan) - 1)
        return float(self.plan[i]), {LAST_DECISION_KEY: {"reason": "oracle plan"}}

    def initial(self) -> int:
        return int(self.plan[0])


class ReactivePolicy(OraclePolicy):
    """The oracle's plan without its foresight: at each moment it asks for what the present
    load needs (the ideal in-service count over the next `window_s`, known exactly, x
    `headroom`), and keeps the highest of those asks for `memory_s` after it; the replicas it
    adds serve a cold start later, as any policy's. Run with Serve delays 0.

    A reference for what any policy that sizes from the load it has seen can reach: it knows
    that load exactly, with no measurement lag and `window_s` of foresight, and its two knobs
    (spare capacity, how long to keep replicas a burst asked for) are what such a policy
    trades attainment for replica-seconds with. It cannot know when the next burst starts."""

    def __init__(self, requests: list[Request], curve: LatencyCurve, target_ongoing: float, window_s: float = 10.0,
                 step_s: float = 1.0, headroom: float = 1.0, memory_s: float = 0.0):
        super().__init__(requests, curve, target_ongoing, 0.0, window_s=window_s, step_s=step_s, headroom=headroom)
        if memory_s < 0:
            raise ValueError(f"memory_s must be >= 0, got {memory_s}")
        keep = int(memory_s / step_s)
        if keep:
            padded = np.concatenate([np.full(keep, self.plan[0]), self.plan])
            self.plan = np.lib.stride_tricks.sliding_window_view(padded, keep + 1).max(axis=1)
