"""Discrete-event simulator of one arm's replicas under Ray Serve autoscaling.

It replays a workload (a trace such as the Azure LLM conversation trace, or a generated member
of the workload family), routes requests to replicas, runs each replica as a
continuous-batching engine whose decode step time comes from a latency-vs-batch curve, and
calls an autoscaling policy the way Serve's controller does: through the same
`policy(ctx) -> (replicas, policy_state)` interface, with Ray's own wrapper functions (scaling
factors, delays) applied on top. corral's policy runs here unchanged. Replicas may fail at
random (`SimConfig.replica_mtbf_s`): their requests fail and Serve replaces them.

Modules: `workload` (requests, trace), `family` (the generated workload family), `replica`
(the engine model), `policies` (Serve's controller path, Ray's default, the oracle), `run`
(the event loop), `evaluate` (the oracle calibration and the goal).
"""

from corral.autoscaler.sim.evaluate import (
    GOAL_ATTAINMENT,
    GOAL_COST_VS_ORACLE,
    GOAL_TEXT,
    attainment_bar,
    calibrated_oracle,
    judge,
    run_oracle,
)
from corral.autoscaler.sim.policies import (
    OraclePolicy,
    PolicyFn,
    ReactivePolicy,
    ideal_concurrency,
    ray_default_policy,
    serve_config,
    serve_controller_step,
)
from corral.autoscaler.sim.replica import CURVES_DIR, LatencyCurve
from corral.autoscaler.sim.run import SimConfig, SimResult, simulate
from corral.autoscaler.sim.workload import DEFAULT_TRACE, Request, load_trace, window

__all__ = [
    "CURVES_DIR", "DEFAULT_TRACE", "GOAL_ATTAINMENT", "GOAL_COST_VS_ORACLE", "GOAL_TEXT", "LatencyCurve",
    "OraclePolicy", "PolicyFn", "ReactivePolicy", "Request", "SimConfig", "SimResult", "attainment_bar", "calibrated_oracle",
    "ideal_concurrency", "judge", "load_trace", "ray_default_policy", "run_oracle", "serve_config",
    "serve_controller_step", "simulate", "window",
]
