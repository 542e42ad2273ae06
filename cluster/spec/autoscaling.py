"""Per-arm autoscaling settings (consumed by corral.autoscaler's Ray Serve policy).

The policy itself lives in `corral.autoscaler.policy`; this module only holds its settings and
the translation into a Ray Serve `autoscaling_config` dict. The policy is named by its import
path (a string), so `corral.serving` can build the dict without importing the autoscaler layer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

# Ray Serve imports this in its controller (`AutoscalingPolicy.policy_function`).
POLICY_IMPORT_PATH = "corral.autoscaler.policy:CorralAutoscalingPolicy"


class AutoscalingSpec(BaseModel):
    """How one arm's replica count follows load. Bounds come from `arm.replicas`."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    policy: str = "corral"
    """`corral` (SLO- and batch-aware policy of corral.autoscaler) or `serve-default`
    (Ray Serve's target-ongoing-requests policy with the same target and delays)."""
    target_ongoing_requests: float = 8.0
    """Requests in flight per replica the policy aims for (≈ the running batch).
    `corral plan capacity` sets it to the knee of latency vs batch size."""
    upscale_delay_s: float = 10.0
    """Load must stay above target this long before adding replicas. An SLO breach or a
    growing queue skips this delay (corral policy only)."""
    downscale_delay_s: float = 120.0
    """Load must stay below target (less the hysteresis) this long before removing replicas."""
    metrics_interval_s: float = 2.0
    """How often replicas report their load to the Serve controller."""
    look_back_period_s: float = 20.0
    """Window over which reported load is averaged."""
    ttft_p95_s: float = 2.0
    """SLO: 95th percentile of time to first token (queueing + prefill), seconds."""
    itl_p95_s: float = 0.1
    """SLO: 95th percentile over requests of the mean inter-token latency, seconds."""
    downscale_hysteresis: float = 0.25
    """A replica is removed only if the others would then run at most
    `(1 - downscale_hysteresis) x target_ongoing_requests` each. 0 = no dead band."""
    queue_per_replica_trigger: float = 1.0
    """Waiting requests (admitted nowhere yet, or beyond a replica's `max_num_seqs`) per
    replica that count as a growing queue and add replicas without waiting `upscale_delay_s`."""
    prefill_tokens_per_s: float = 0.0
    """One replica's prefill throughput, prompt tokens per second (`1 / prefill_s_per_token` of
    the latency-curve.json `corral plan capacity` writes). With it, the prompt tokens each
    replica holds that still wait for their prefill (reported by the replica) become a prefill
    backlog in seconds; see `prefill_backlog_ttft_share`. 0 = that signal is not used (the
    default: on the simulated workload family it changed no decision, docs/autoscaler-family.md)."""
    prefill_backlog_ttft_share: float = 0.5
    """A prefill backlog per replica above this share of `ttft_p95_s` counts as prefill pressure
    and adds replicas without waiting `upscale_delay_s` (like a growing queue): a request that
    arrives behind it waits that long for its first token before its own prefill."""
    kv_cache_high: float = 0.9
    """KV cache use (0-1, mean over replicas) treated as saturation, like an SLO breach."""
    downscale_max_fraction: float = 0.25
    """Most replicas removed in one step, as a share of the current target (at least 1);
    each further step waits `downscale_delay_s` again, so a fleet shrinks gradually."""
    downscale_direct_below_share: float = 0.0
    """When the most replicas the load asked for during the whole `downscale_delay_s` is at most
    this share of the current target (a burst has passed), scale down to that number in one step
    instead of by `downscale_max_fraction`. 0 = always shrink gradually (the default: on the
    simulated workload family a direct drop lost attainment on 9 of 10 held-out members, docs/autoscaler-family.md)."""
    trend_horizon_s: float = 30.0
    """When adding replicas, provision for the load expected this far ahead along the
    recent rising trend (load grows while new replicas start). 0 = react to current load only."""
    latency_over_replicas: str = "worst"
    """How the replicas' reported TTFT and ITL p95s become the arm's: `worst` (the highest: one slow
    replica already breaks the SLO for its users) or `mean` (their mean: a p95 over the few requests
    one replica finished in `look_back_period_s` is noisy, and the worst of many such is noisier).
    `worst` is the default: on the simulated workload family `mean` saved a quarter of the
    replica-seconds on the smooth members for 1.3-2.2 points of attainment (docs/autoscaler-family.md)."""
    engine_base_s: float = 0.0
    """The engine model's fixed cost of one engine step, seconds (`base_s` of the engine model in
    the latency-curve.json `corral plan capacity` writes). Used by `slo_packing_itl_share` and
    `model_sizing_utilisation`."""
    engine_per_decode_seq_s: float = 0.0
    """The engine model's cost of one more decoding sequence in a step, seconds
    (`per_decode_seq_s`). 0 = the model-based knobs are off."""
    engine_per_prefill_token_s: float = 0.0
    """The engine model's cost of one prompt token in a step, seconds (`per_prefill_token_s`)."""
    slo_packing_itl_share: float = 0.75
    """Model-based packing: raise the batch target (never lower it) to the requests per replica at
    which the engine model predicts the replicas' ITL p95 reaches this share of `itl_p95_s`. The
    prediction scales the reported ITL p95 by the model's decode step time
    (`engine_base_s + engine_per_decode_seq_s x batch`) from the batch running now to the
    candidate batch, so prefill stalls seen now are carried along; at most `max_num_seqs`, and only
    while the TTFT p95 is within this share of `ttft_p95_s` too. Acts only with the engine model
    (`engine_per_decode_seq_s` > 0). 0 = the fixed target. The default, 0.75, was chosen on the
    workload family's tuning draws (0.6 changed nothing, 0.9 lost attainment) and kept on the
    held-out draws (fewer replica-seconds on one member, worse on none; docs/autoscaler-family.md)."""
    model_sizing_utilisation: float = 0.0
    """Model-based sizing (as Dynamo's SLA planner sizes from profiled throughput): the replicas
    for the load are the engine-seconds per second the arm's work needs, divided by this share of
    a replica's time. The work is what the replicas report doing (requests prefilled, prompt
    tokens and output tokens per second) costed on the engine model: a prefill step's base and
    tokens, and each output token a `1 / target_ongoing_requests` share of a decode step at the
    batch target; plus the requests the load trend adds over `trend_horizon_s`, at
    `target_ongoing_requests` each.
    Fewer replicas (scale-down) keep the hysteresis band. 0 = size by requests in flight over
    `target_ongoing_requests` (the default: on the simulated workload family it was not better on
    every held-out member, docs/autoscaler-family.md)."""
    backlog_drain_s: float = 0.0
    """Demand sizing: size the arm for the requests arriving, not the requests in the system. The
    arrival rate is what the replicas report prefilling per second plus the growth of the requests
    in the system (conservation: what arrives is served or waits); a request costs its engine time
    on the engine model (its prompt tokens at `engine_per_prefill_token_s`, its answer tokens each a
    `1 / target` share of a decode step of `target` sequences; lengths from the reported token
    rates), and the replicas are the engine-seconds per second the arrivals need. The requests
    waiting (at the handles or beyond an engine's batch) are a backlog drained within this many
    seconds: `backlog / backlog_drain_s` more arrivals per second, instead of one replica per
    `target` waiting requests, which asks for replicas a burst's queue no longer needs once they
    have started. Acts only with the engine model, the work rates reported and at least one request
    prefilled in `look_back_period_s`; otherwise, and at 0, the arm is sized by requests in the system
    (0, off, is the default: on the simulated workload family it saved replica-seconds and lost
    attainment on the bursty members, whose first burst then finds fewer replicas held; docs/autoscaler-family.md).
    0 or at least 1 s."""
    waiting_drain_s: float = 0.0
    """Backlog sizing: the requests waiting for a batch slot (queued at the handles, or admitted by a
    replica beyond its `max_num_seqs`) count as a backlog drained within this many seconds, their
    engine time on the engine model (a request's mean, as demand sizing costs it) over this time,
    instead of one replica per `target_ongoing_requests` of them. The requests in service and the
    load trend size the arm as without it, so a quiet arm holds the same replicas. A queue built
    while new replicas start is mostly served before they do; packed at the batch target it asked
    for a replica per few waiting requests (a long-answer burst took an arm from 3 to 22 replicas
    where 7 served it). Acts only with the engine model, the work rates reported and at least one
    request prefilled in `look_back_period_s`; `backlog_drain_s` (demand sizing) replaces it when on.
    0 = off (the default: on the simulated workload family 10 s, chosen on the tuning draws, was
    worse on three held-out members, docs/autoscaler-family.md); otherwise at least 1 s."""
    burst_memory_s: float = 0.0
    """Burst memory: keep at least `burst_memory_share` of the most replicas the load asked for
    within this many seconds. A burst shorter than a cold start is served by the replicas already
    running when it comes, so an arm that has seen one keeps what it needed for a while.
    0 = off (the default: on the simulated workload family it bought 1.7-8 points on five members and
    cost the others replica-seconds or attainment, docs/autoscaler-family.md)."""
    burst_memory_share: float = 1.0
    """With `burst_memory_s`, the share of the remembered peak kept (0-1)."""
    itl_model_share: float = 0.0
    """Prefill-aware ITL sizing: the replicas for the load are at least the fewest at which the
    engine model predicts a request's mean inter-token latency stays within this share of
    `itl_p95_s`. From the work the replicas report (prompt tokens prefilled and output tokens per
    second, summed), `W` = `prompt tokens x engine_per_prefill_token_s + output tokens x
    engine_per_decode_seq_s` engine-seconds per second: on `N` replicas a request's decode step is
    `engine_base_s + engine_per_decode_seq_s x batch`, the prompts arriving at its replica are
    computed in its steps (vLLM's mixed steps) and lengthen them by their share of the time, and
    with the batch from Little's law its mean ITL is `engine_base_s / (1 - W / N)`, within the share when `N >= W / (1 - engine_base_s / (share x itl_p95_s))`. `W` is taken
    `itl_model_horizon_s` ahead along its rising trend. An ITL p95 above `itl_p95_s` then adds
    replicas only while the model also finds the serving replicas too few (a short answer caught by
    one prefill breaks the p95 of a replica's window without the fleet being short), so it no
    longer holds the fleet up by itself. Acts only with the engine model (`engine_per_decode_seq_s`
    > 0), the work rates reported and a share above `engine_base_s / itl_p95_s`. 0 = off (the
    default: on the simulated workload family 0.55, chosen on the tuning draws, was better on two
    held-out members and worse on six, docs/autoscaler-family.md)."""
    itl_model_horizon_s: float = 60.0
    """With `itl_model_share`, size for the work expected this far ahead along its rising trend
    (smoothed over `look_back_period_s`). The work reported is work done, which follows the
    capacity while replicas join or leave, requests queue at the handles or the TTFT p95 is above
    its SLO, so the trend counts only after a whole `look_back_period_s` without any of these.
    0 = size for the work reported now. 60 s was chosen with `itl_model_share` 0.55 on the workload
    family's tuning draws (0, 30, 45, 60 and 90 s tried)."""
    breach_upscale_fraction: float = 0.25
    """Replicas added on an SLO breach, as a share of the current target (at least 1). With
    `breach_upscale_proportional`, the most added on a latency breach."""
    breach_upscale_proportional: bool = True
    """On a latency (TTFT or ITL) breach, add replicas in proportion to how far the p95 is above
    its SLO, as Kubernetes' HPA does: `current x (p95 / SLO - 1)` (at least 1, at most
    `breach_upscale_fraction` of the current target). A p95 just over the SLO, as one slow
    request in a replica's window makes it, then adds one replica instead of a quarter of the
    fleet. Queue and KV cache breaches always add `breach_upscale_fraction`. False = always
    add `breach_upscale_fraction`."""
    cold_start_s: float = 60.0
    """Seconds from asking for a replica to it serving (placement, weights, engine warm-up).
    After a breach-driven scale-up the policy waits this long before another one, so it does
    not keep adding replicas for a breach the starting ones will fix."""
    replica_floor: int = 0
    """Fewest replicas while this arm is mid-rollout, written by the rollout controller
    (0 = no floor). Raised above `replicas.min`, clamped to `replicas.max`."""

    @field_validator("latency_over_replicas")
    @classmethod
    def _latency_reduce(cls, v: str) -> str:
        if v not in ("worst", "mean"):
            raise ValueError(f"latency_over_replicas {v!r} is unknown; use 'worst' or 'mean'")
        return v

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in ("corral", "serve-default"):
            raise ValueError(f"policy {v!r} is unknown; use 'corral' or 'serve-default'")
        return v

    @field_validator(
        "target_ongoing_requests", "metrics_interval_s", "look_back_period_s", "ttft_p95_s", "itl_p95_s",
        "breach_upscale_fraction", "downscale_max_fraction", "prefill_backlog_ttft_share",
    )
    @classmethod
    def _positive(cls, v: float, info: ValidationInfo) -> float:
        if not v > 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v!r}")
        return v

    @field_validator("upscale_delay_s", "downscale_delay_s", "cold_start_s", "queue_per_replica_trigger",
                     "trend_horizon_s", "prefill_tokens_per_s", "engine_base_s", "engine_per_decode_seq_s",
                     "engine_per_prefill_token_s", "itl_model_horizon_s", "burst_memory_s")
    @classmethod
    def _non_negative(cls, v: float, info: ValidationInfo) -> float:
        if not v >= 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v!r}")
        return v

    @field_validator("downscale_direct_below_share", "slo_packing_itl_share", "model_sizing_utilisation",
                     "itl_model_share", "burst_memory_share")
    @classmethod
    def _share(cls, v: float, info: ValidationInfo) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"{info.field_name} is a share of the current replicas, in [0, 1]; got {v!r}")
        return v

    @field_validator("downscale_hysteresis")
    @classmethod
    def _hysteresis(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"downscale_hysteresis must lie in [0, 1), got {v!r}")
        return v

    @field_validator("kv_cache_high")
    @classmethod
    def _kv(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"kv_cache_high is a share of the KV cache, in (0, 1]; got {v!r}")
        return v

    @field_validator("backlog_drain_s", "waiting_drain_s")
    @classmethod
    def _drain(cls, v: float, info: ValidationInfo) -> float:
        if v != 0 and not v >= 1:
            raise ValueError(f"{info.field_name} is 0 (off) or at least 1 second, got {v!r}")
        return v

    @field_validator("replica_floor")
    @classmethod
    def _floor(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"replica_floor must be >= 0, got {v!r}")
        return v

    @model_validator(mode="after")
    def _window(self) -> AutoscalingSpec:
        if self.look_back_period_s < self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) is shorter than "
                f"metrics_interval_s ({self.metrics_interval_s}): the window would hold no sample"
            )
        return self


MIN_MAX_ONGOING_REQUESTS = 8
"""Floor of `max_ongoing_requests`, for arms with a very small `max_num_seqs`."""


def max_ongoing_requests(max_num_seqs: int) -> int:
    """Requests Ray Serve admits to one replica at once (its deployment's `max_ongoing_requests`).

    Twice the engine's batch (`engine.max_num_seqs`), at least `MIN_MAX_ONGOING_REQUESTS`: a
    replica admits more than one batch, so vLLM's scheduler, not Serve, does the batching; beyond
    that, requests wait at Serve's handle, where the router can still send them to another
    replica (or a new one).
    Ray Serve LLM would otherwise admit everything (`DEFAULT_MAX_ONGOING_REQUESTS`, 1e9, in
    `ray/llm/_internal/serve/constants.py` via `core/server/builder.py:DEFAULT_DEPLOYMENT_OPTIONS`).

    The one home of this rule: the serving app configures deployments with it and the
    autoscaler simulator routes with it.
    """
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs!r}")
    return max(2 * max_num_seqs, MIN_MAX_ONGOING_REQUESTS)


def check_against_arm(spec: AutoscalingSpec, max_num_seqs: int, min_replicas: int, max_replicas: int) -> None:
    """Cross-checks that need the arm's engine and replica bounds. Raises ValueError."""
    if spec.target_ongoing_requests > 2 * max_num_seqs:
        raise ValueError(
            f"target_ongoing_requests ({spec.target_ongoing_requests}) is more than twice "
            f"engine.max_num_seqs ({max_num_seqs}): replicas would queue before ever scaling out"
        )
    if spec.replica_floor > max_replicas:
        raise ValueError(
            f"replica_floor ({spec.replica_floor}) is larger than replicas.max ({max_replicas})"
        )
    if min_replicas > max_replicas:
        raise ValueError(f"replicas.min ({min_replicas}) is larger than replicas.max ({max_replicas})")


def serve_autoscaling_config(
    spec: AutoscalingSpec,
    *,
    arm: str,
    min_replicas: int,
    max_replicas: int,
    initial_replicas: int,
    max_num_seqs: int,
) -> dict[str, Any]:
    """The Ray Serve `autoscaling_config` dict (also valid in serveConfigV2 YAML) for one arm.

    With the corral policy, Serve's own delays are set to 0: the policy applies
    `upscale_delay_s`/`downscale_delay_s` itself (one place for guardrails), and Serve's
    wrapper would otherwise delay every decision a second time.
    """
    check_against_arm(spec, max_num_seqs, min_replicas, max_replicas)
    cfg: dict[str, Any] = {
        "min_replicas": min_replicas,
        "initial_replicas": initial_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": spec.target_ongoing_requests,
        "upscale_delay_s": spec.upscale_delay_s,
        "downscale_delay_s": spec.downscale_delay_s,
        "metrics_interval_s": spec.metrics_interval_s,
        "look_back_period_s": spec.look_back_period_s,
    }
    if spec.policy == "corral":
        cfg["upscale_delay_s"] = 0.0
        cfg["downscale_delay_s"] = 0.0
        cfg["policy"] = {"policy_function": POLICY_IMPORT_PATH, "policy_kwargs": policy_kwargs(
            spec, arm=arm, min_replicas=min_replicas, max_replicas=max_replicas, max_num_seqs=max_num_seqs)}
    return cfg


def policy_kwargs(
    spec: AutoscalingSpec, *, arm: str, min_replicas: int, max_replicas: int, max_num_seqs: int
) -> dict[str, Any]:
    """JSON-able kwargs for `CorralAutoscalingPolicy(**kwargs)` (Serve's `policy_kwargs`)."""
    out = spec.model_dump(exclude={"policy", "metrics_interval_s"})
    out.update(arm=arm, min_replicas=min_replicas, max_replicas=max_replicas, max_num_seqs=max_num_seqs)
    return out
