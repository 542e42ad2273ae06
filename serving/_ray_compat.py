"""Ray Serve private functions corral relies on, behind one module.

Ray 2.60's `ray/serve/autoscaling_policy.py` applies these around every autoscaling policy
(`_apply_autoscaling_config`); the simulator reproduces that wrapper with the simulated clock.
Each name here wraps one private function so a Ray upgrade that moves them changes this file only.
"""

from __future__ import annotations

from typing import Any


def _rp():
    from ray.serve import autoscaling_policy

    return autoscaling_policy


def cold_start_replicas(ctx: Any) -> int | None:
    """Serve's cold-start fast path (`_get_cold_start_scale_up_replicas`): replicas to start
    at once when none runs and requests wait, else None."""
    return _rp()._get_cold_start_scale_up_replicas(ctx)


def internal_policy_state(state: dict[str, Any]) -> dict[str, Any]:
    """Serve's own keys (delay counters) in a policy_state (`_extract_internal_policy_state`)."""
    return _rp()._extract_internal_policy_state(state)


def apply_scaling_factors(desired: float, current: int, config: Any) -> int:
    """Serve's upscaling/downscaling factors applied to a desired count (`_apply_scaling_factors`)."""
    return _rp()._apply_scaling_factors(desired, current, config)


def apply_delay_logic(desired: int, curr_target: int, config: Any, policy_state: dict[str, Any],
                      _now: float | None = None) -> tuple[int, dict[str, Any]]:
    """Serve's upscale/downscale delays (`_apply_delay_logic`); `_now` replaces the wall clock."""
    return _rp()._apply_delay_logic(desired, curr_target, config, policy_state, _now=_now)
