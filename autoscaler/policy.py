"""corral's autoscaling policy: a pure decision function plus the thin Ray Serve adapter.

Layout (read top to bottom):

* `PolicyConfig`  one arm's settings (the fleet's `AutoscalingSpec` + replica bounds + batch size).
* `Signals`       one snapshot of what the arm looks like now (load, queue, latency, KV cache).
* `assess`        what the load asks for, ignoring time: replicas for the batch target, and
                  whether the arm is in trouble (SLO breach, growing queue, KV cache full).
* `guard`         the one wrapper with every guardrail: bounds, rollout floor, delays,
                  hysteresis, cold start. Turns an assessment into a `Decision`.
* `remember_peak` burst memory: the fewest replicas kept never below a share of the recent peak.
* `decide`        `guard(remember_peak(assess(...)))`: pure function of (signals, config, state, now).
* `CorralAutoscalingPolicy`  what Ray Serve calls (`AutoscalingConfig.policy`): reads the
                  `AutoscalingContext`, calls `decide`, returns (replicas, policy_state).

Serve calls the policy from its controller every control-loop tick; there is no second
loop. The policy keeps its memory (delay windows, last scale-up) in Serve's `policy_state`.

Replica-side signals: corral's arm replicas (`corral.serving.llm_server.CorralLLMServer`)
implement Serve's `record_autoscaling_stats()` and return vLLM's own recent TTFT p95,
per-request ITL p95, KV cache use and the prompt tokens waiting for their prefill
(`METRIC_TTFT_P95`, `METRIC_ITL_P95`, `METRIC_KV_CACHE`, `METRIC_QUEUED_PROMPT_TOKENS`), which
reach the policy through `ctx.aggregated_metrics`. Without them (another server class,
stats off) the policy works from ongoing and queued requests alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from corral.cluster import metric_names
from corral.cluster.spec.autoscaling import AutoscalingSpec

# Custom metric names replicas report via `record_autoscaling_stats()`.
METRIC_TTFT_P95 = metric_names.SIGNAL_TTFT_P95
METRIC_ITL_P95 = metric_names.SIGNAL_ITL_P95
METRIC_KV_CACHE = metric_names.SIGNAL_KV_CACHE
METRIC_QUEUED_PROMPT_TOKENS = metric_names.SIGNAL_QUEUED_PROMPT_TOKENS
METRIC_REQUESTS_PER_S = metric_names.SIGNAL_REQUESTS_PER_S
METRIC_PROMPT_TOKENS_PER_S = metric_names.SIGNAL_PROMPT_TOKENS_PER_S
METRIC_OUTPUT_TOKENS_PER_S = metric_names.SIGNAL_OUTPUT_TOKENS_PER_S
_log = logging.getLogger("ray.serve")
# Key of this policy's memory inside Serve's policy_state (Serve keeps its own keys there too).
STATE_KEY = "corral"
LAST_DECISION_KEY = "corral_last_decision"

Operator = Literal["scale_up", "scale_down", "hold"]


@dataclass(frozen=True)
class PolicyConfig:
    """Everything the policy needs to know about one arm, fixed between fleet-spec changes."""

    spec: AutoscalingSpec = field(default_factory=AutoscalingSpec)
    """The arm's autoscaling settings (targets, SLOs, delays, rollout floor)."""
    min_replicas: int = 1
    """`arm.replicas.min`."""
    max_replicas: int = 1
    """`arm.replicas.max`."""
    max_num_seqs: int = 16
    """`arm.engine.max_num_seqs`: requests beyond this per replica wait in the engine."""
    arm: str = ""
    """Arm name, for reasons and logs."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < 1 or self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= 1 and >= min_replicas ({self.min_replicas})"
            )
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> PolicyConfig:
        """Build from Serve's `policy_kwargs` (see `cluster.spec.autoscaling.policy_kwargs`).
        Unknown keys are refused by the spec, naming the field."""
        kw = dict(kwargs)
        bounds = {k: kw.pop(k) for k in ("min_replicas", "max_replicas", "max_num_seqs", "arm") if k in kw}
        return cls(spec=AutoscalingSpec(**kw), **bounds)

    @property
    def lower_bound(self) -> int:
        """Fewest replicas allowed now: min, raised to the rollout floor, never above max."""
        return min(max(self.min_replicas, self.spec.replica_floor), self.max_replicas)


@dataclass(frozen=True)
class Signals:
    """One snapshot of an arm, as Serve's controller sees it."""

    running_replicas: int
    """Replicas serving now."""
    target_replicas: int
    """Replicas asked for last time (running + still starting)."""
    ongoing_requests: float
    """Requests in the system for this arm: running in a batch, waiting in an engine, or
    queued at a handle (Serve's `total_num_requests`, averaged over the look-back window)."""
    queued_requests: float = 0.0
    """Of those, requests queued at handles that no replica has admitted yet."""
    ttft_p95_s: float | None = None
    """Recent p95 time to first token, if replicas report it."""
    itl_p95_s: float | None = None
    """Recent p95 inter-token latency, if replicas report it."""
    kv_cache_usage: float | None = None
    """Mean KV cache use over replicas (0-1), if reported."""
    queued_prompt_tokens: float | None = None
    """Prompt tokens waiting for their prefill, summed over replicas, if reported."""
    requests_per_s: float | None = None
    """Requests prefilled per second, summed over replicas, if reported."""
    prompt_tokens_per_s: float | None = None
    """Prompt tokens prefilled per second, summed over replicas, if reported."""
    output_tokens_per_s: float | None = None
    """Output tokens generated per second, summed over replicas, if reported."""


@dataclass(frozen=True)
class Assessment:
    """What the load asks for, before any guardrail."""

    load_replicas: int
    """Replicas that run `target_ongoing_requests` each."""
    down_replicas: int
    """Fewest replicas that stay below the target less the hysteresis band."""
    breach: str | None
    """Why the arm is in trouble now (SLO breach, queue, KV cache), or None."""
    urgent_replicas: int
    """Replicas wanted right away because of `breach` (0 when there is none)."""
    load_basis: str = ""
    """What sized `load_replicas`, for the decision's reason."""


@dataclass(frozen=True)
class PolicyState:
    """The policy's memory between ticks (stored in Serve's `policy_state`)."""

    above_since_s: float | None = None
    """When load first asked for more replicas in the current streak."""
    below_since_s: float | None = None
    """When load first allowed fewer replicas in the current streak."""
    below_peak: int = 0
    """Most replicas load asked for during the current scale-down streak."""
    last_scale_up_s: float | None = None
    """When the policy last added replicas (cold-start guard)."""
    load_ref: tuple[float, float] | None = None
    """(time, ongoing requests) at the previous call, for the load trend."""
    trend_per_s: float = 0.0
    """Growth of ongoing requests per second, smoothed over `look_back_period_s`."""
    work_ref: tuple[float, float, float] | None = None
    """(time, the ITL model's work, running replicas) at the previous call where the work was known."""
    work_trend_per_s: float = 0.0
    """Growth of the ITL model's work per second, smoothed over `look_back_period_s`; 0 until a
    whole `look_back_period_s` has passed since `fleet_changed_s`."""
    fleet_changed_s: float | None = None
    """When the replicas serving last changed in number, requests last queued at the handles or the
    TTFT p95 was last above its SLO (the work reported then follows the capacity, not the demand)."""
    peak_load: float = 0.0
    """Most replicas the load asked for within `burst_memory_s` (see `remember_peak`)."""
    peak_load_s: float | None = None
    """When the load asked for `peak_load`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PolicyState:
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        for ref in ("load_ref", "work_ref"):
            if kw.get(ref) is not None:
                kw[ref] = tuple(kw[ref])
        return cls(**kw)


@dataclass(frozen=True)
class Decision:
    """A typed scaling decision: what to do, to how many replicas, and why."""

    operator: Operator
    replicas: int
    reason: str


def packing_target(signals: Signals, config: PolicyConfig) -> float:
    """Requests per replica the policy sizes for: `target_ongoing_requests`, raised by model-based
    packing (`slo_packing_itl_share`) to the batch at which the engine model predicts the ITL p95
    reaches that share of the ITL SLO. The worst replica's ITL p95 at the batch running now is
    scaled by the model's decode step time, step(b) / step(b_now), so the prefill time its steps
    hold scales with it. Never below the fixed target, never above `max_num_seqs`; the fixed target
    whenever a signal is missing or the TTFT p95 is above the same share of its SLO."""
    spec = config.spec
    target = spec.target_ongoing_requests
    share, base, per_seq = spec.slo_packing_itl_share, spec.engine_base_s, spec.engine_per_decode_seq_s
    running = signals.running_replicas
    if share <= 0 or per_seq <= 0 or running <= 0 or signals.itl_p95_s is None or signals.itl_p95_s <= 0:
        return target
    if signals.ttft_p95_s is not None and signals.ttft_p95_s > share * spec.ttft_p95_s:
        return target
    batch_now = min(max(1.0, (signals.ongoing_requests - signals.queued_requests) / running),
                    float(config.max_num_seqs))
    step_budget = share * spec.itl_p95_s * (base + per_seq * batch_now) / signals.itl_p95_s
    batch_at_slo = (step_budget - base) / per_seq
    return max(target, min(batch_at_slo, float(config.max_num_seqs)))


def model_replicas(signals: Signals, config: PolicyConfig) -> float | None:
    """Model-based sizing (`model_sizing_utilisation`): the engine-seconds per second the reported
    work needs on the engine model, each output token costing a `1 / target_ongoing_requests`
    share of a decode step at the batch target, over the share of a replica's time allowed.
    None when it is off or a rate is not reported."""
    spec = config.spec
    share = spec.model_sizing_utilisation
    rates = (signals.requests_per_s, signals.prompt_tokens_per_s, signals.output_tokens_per_s)
    if share <= 0 or spec.engine_per_decode_seq_s <= 0 or any(r is None for r in rates):
        return None
    requests, prompt_tokens, output_tokens = (max(0.0, r or 0.0) for r in rates)
    batch = spec.target_ongoing_requests
    decode_step_s = spec.engine_base_s + spec.engine_per_decode_seq_s * batch
    busy = (requests * spec.engine_base_s + prompt_tokens * spec.engine_per_prefill_token_s
            + output_tokens * decode_step_s / batch)
    return busy / share


def demand_replicas(signals: Signals, config: PolicyConfig, target: float, rising_per_s: float) -> float | None:
    """Demand sizing (`backlog_drain_s`): the engine-seconds per second the arriving requests need
    on the engine model, with the waiting requests drained within `backlog_drain_s`. Requests
    arrive at the rate the replicas report prefilling plus `rising_per_s` (the growth of the
    requests in the system: what arrives is served or waits), each costing `request_engine_s`.
    None when off or that is unknown."""
    spec = config.spec
    per_request_s = request_engine_s(signals, config, target)
    if spec.backlog_drain_s <= 0 or per_request_s is None:
        return None
    arrivals = max(0.0, signals.requests_per_s or 0.0) + max(0.0, rising_per_s)
    return (arrivals + waiting_requests(signals, config) / spec.backlog_drain_s) * per_request_s


def request_engine_s(signals: Signals, config: PolicyConfig, target: float) -> float | None:
    """A request's mean engine time on the engine model, from the reported work rates: its prompt
    tokens' prefill and each of its answer tokens a `1 / target` share of a decode step of
    `target` sequences. None without the engine model, with a rate not reported, or when fewer
    than one request was prefilled in `look_back_period_s` (the rates then say nothing about a
    request's length)."""
    spec = config.spec
    rates = (signals.requests_per_s, signals.prompt_tokens_per_s, signals.output_tokens_per_s)
    if spec.engine_per_decode_seq_s <= 0 or any(r is None for r in rates):
        return None
    done, prompt_tokens, output_tokens = (max(0.0, r or 0.0) for r in rates)
    if done * spec.look_back_period_s < 1.0:
        return None
    decode_step_s = spec.engine_base_s + spec.engine_per_decode_seq_s * target
    return (prompt_tokens * spec.engine_per_prefill_token_s + output_tokens * decode_step_s / target) / done


def backlog_replicas(signals: Signals, config: PolicyConfig, target: float) -> float | None:
    """Backlog sizing (`waiting_drain_s`): the replicas that serve the waiting requests within
    `waiting_drain_s`, each costing `request_engine_s`. None when off or that is unknown."""
    per_request_s = request_engine_s(signals, config, target)
    if config.spec.waiting_drain_s <= 0 or per_request_s is None:
        return None
    return waiting_requests(signals, config) / config.spec.waiting_drain_s * per_request_s


def waiting_requests(signals: Signals, config: PolicyConfig) -> float:
    """Requests no batch is running: queued at the handles, or admitted by replicas beyond their
    `max_num_seqs` (waiting inside the engine)."""
    queued = max(0.0, signals.queued_requests)
    running = max(signals.running_replicas, 0)
    return queued + max(0.0, signals.ongoing_requests - queued - running * config.max_num_seqs)


def itl_model_work(signals: Signals, config: PolicyConfig) -> float | None:
    """The engine-seconds per second of the reported work that slow a request's tokens: the prompt
    tokens computed in the steps it decodes in and each decoding sequence's share of a decode step
    (`W` of `itl_model_replicas`). None when the ITL model is off or cannot act."""
    spec = config.spec
    rates = (signals.prompt_tokens_per_s, signals.output_tokens_per_s)
    if (spec.itl_model_share * spec.itl_p95_s <= spec.engine_base_s or spec.engine_per_decode_seq_s <= 0
            or any(r is None for r in rates)):
        return None
    prompt_tokens, output_tokens = (max(0.0, r or 0.0) for r in rates)
    return prompt_tokens * spec.engine_per_prefill_token_s + output_tokens * spec.engine_per_decode_seq_s


def itl_model_replicas(signals: Signals, config: PolicyConfig, work_rising_per_s: float = 0.0) -> float | None:
    """Prefill-aware ITL sizing (`itl_model_share`): the fewest replicas at which the engine model
    predicts a request's mean inter-token latency stays within that share of the ITL SLO, for the
    work expected `itl_model_horizon_s` ahead along its rising trend (`work_rising_per_s`, engine-seconds
    per second per second; 0 when flat or falling).

    On `N` replicas sharing the reported work, a replica's decode step of `b` sequences takes
    `base + per_seq x b`, and the prompts of the requests arriving there are computed in those
    steps (vLLM's mixed steps: their tokens' cost, not a step base of their own), lengthening them
    by a `P / N` share of the time, `P` the fleet's prompt-token engine-seconds per second. A
    request's mean ITL is then `(base + per_seq x b) / (1 - P / N)`, and by Little's law
    `b = (output tokens per second / N) x ITL`; solved, `ITL = base / (1 - W / N)` with
    `W = P + output tokens per second x per_seq`. Within `share x SLO` when
    `N >= W / (1 - base / (share x SLO))`. None when off, without the engine model, with a rate
    not reported, or when the share is at or below a bare decode step (`base / SLO`)."""
    spec = config.spec
    work = itl_model_work(signals, config)
    if work is None:
        return None
    work += max(0.0, work_rising_per_s) * spec.itl_model_horizon_s
    return work / (1.0 - spec.engine_base_s / (spec.itl_model_share * spec.itl_p95_s))


def assess(signals: Signals, config: PolicyConfig, rising_per_s: float = 0.0,
           work_rising_per_s: float = 0.0) -> Assessment:
    """Replicas the load needs (batch target) and whether latency is at risk. No bounds.
    `rising_per_s` is the recent growth of ongoing requests (0 when flat or falling),
    `work_rising_per_s` that of the ITL model's work (`itl_model_work`).
    On a latency breach the replicas added grow with how far the p95 is above its SLO
    (`breach_upscale_proportional`), up to `breach_upscale_fraction` of the fleet. With the
    prefill-aware ITL model (`itl_model_share`) the replicas it predicts the ITL SLO needs are part
    of the load, and an ITL p95 above its SLO is a breach only while the model also finds the
    serving replicas too few (otherwise it is the noise of a short answer caught by a prefill)."""
    spec = config.spec
    ongoing = max(0.0, signals.ongoing_requests)
    running = max(signals.running_replicas, 0)
    target = packing_target(signals, config)
    expected = ongoing + max(0.0, rising_per_s) * spec.trend_horizon_s
    load = math.ceil(expected / target - 1e-9)
    basis = f"{ongoing:.3g} requests in the system at {target:.3g} each"
    down = math.ceil(ongoing / (target * (1.0 - spec.downscale_hysteresis)) - 1e-9)
    waiting = waiting_requests(signals, config)
    backlog = backlog_replicas(signals, config, target)
    if backlog is not None:
        sized = max(0.0, expected - waiting) / target + backlog
        load = math.ceil(sized - 1e-9)
        basis = (f"{max(0.0, ongoing - waiting):.3g} requests in service at {target:.3g} each, {waiting:.3g} waiting "
                 f"drained within {spec.waiting_drain_s:g}s")
    demand = demand_replicas(signals, config, target, rising_per_s)
    if demand is not None:
        load = math.ceil(demand - 1e-9)
        basis = f"arriving requests' engine time {demand:.3g} s/s"
    model = model_replicas(signals, config)
    if model is not None:
        # The next interval's work: the requests the trend adds over trend_horizon_s, at the target each.
        load = math.ceil(model + (expected - ongoing) / target - 1e-9)
        basis = f"reported work {model * spec.model_sizing_utilisation:.3g} s/s at {spec.model_sizing_utilisation:g}"
        down = math.ceil(model / (1.0 - spec.downscale_hysteresis) - 1e-9)
    itl_model = itl_model_replicas(signals, config, work_rising_per_s)
    if itl_model is not None and math.ceil(itl_model - 1e-9) > load:
        # Never below what the batch target (or model sizing) asks.
        load = math.ceil(itl_model - 1e-9)
        basis = f"ITL model: {itl_model:.3g} replicas keep ITL within {spec.itl_model_share:g} x SLO"
    if itl_model is not None:
        now_need = itl_model_replicas(signals, config) or 0.0
        down = max(down, math.ceil(now_need / (1.0 - spec.downscale_hysteresis) - 1e-9))

    waiting_per_replica = waiting / max(running, 1)

    breach = None
    over_slo = None  # p95 / SLO on a latency breach
    if signals.ttft_p95_s is not None and signals.ttft_p95_s > spec.ttft_p95_s:
        breach = f"ttft p95 {signals.ttft_p95_s:.3g}s > SLO {spec.ttft_p95_s:g}s"
        over_slo = signals.ttft_p95_s / spec.ttft_p95_s
    elif ((itl_model is None or itl_model > running) and signals.itl_p95_s is not None
          and signals.itl_p95_s > spec.itl_p95_s):
        # With the ITL model, a breach only where the model confirms it: more replicas needed than serve.
        breach = f"itl p95 {signals.itl_p95_s:.3g}s > SLO {spec.itl_p95_s:g}s"
        over_slo = signals.itl_p95_s / spec.itl_p95_s
    elif signals.kv_cache_usage is not None and signals.kv_cache_usage >= spec.kv_cache_high:
        breach = f"kv cache {signals.kv_cache_usage:.0%} >= {spec.kv_cache_high:.0%}"
    elif running > 0 and waiting_per_replica > spec.queue_per_replica_trigger:
        breach = (f"{waiting_per_replica:.3g} waiting requests per replica > "
                  f"{spec.queue_per_replica_trigger:g}")
    elif (running > 0 and spec.prefill_tokens_per_s > 0 and signals.queued_prompt_tokens is not None
          and signals.queued_prompt_tokens / running / spec.prefill_tokens_per_s
          > spec.prefill_backlog_ttft_share * spec.ttft_p95_s):
        backlog_s = signals.queued_prompt_tokens / running / spec.prefill_tokens_per_s
        breach = (f"prefill backlog {backlog_s:.3g}s per replica > "
                  f"{spec.prefill_backlog_ttft_share:g} x TTFT SLO {spec.ttft_p95_s:g}s")

    urgent = 0
    if breach is not None:
        current = signals.target_replicas
        share = spec.breach_upscale_fraction
        if over_slo is not None and spec.breach_upscale_proportional:
            # As far above the SLO as latency is (HPA's rule), at most breach_upscale_fraction.
            share = min(share, over_slo - 1.0)
        step = max(1, math.ceil(current * share - 1e-9))
        urgent = max(load, current + step)
    return Assessment(load_replicas=load, down_replicas=down, breach=breach, urgent_replicas=urgent,
                      load_basis=basis)


def guard(
    assessment: Assessment, signals: Signals, config: PolicyConfig, state: PolicyState, now: float
) -> tuple[Decision, PolicyState]:
    """Every guardrail in one place: bounds and rollout floor, upscale delay (skipped on a
    breach), cold start, downscale delay with hysteresis. Always returns replicas within
    [config.lower_bound, config.max_replicas]."""
    spec = config.spec
    lower, upper = config.lower_bound, config.max_replicas
    current = signals.target_replicas

    def clamp(n: int) -> int:
        return min(max(n, lower), upper)

    def out(n: int, why: str, new_state: PolicyState) -> tuple[Decision, PolicyState]:
        n = clamp(n)
        op: Operator = "scale_up" if n > current else "scale_down" if n < current else "hold"
        if op == "scale_up":
            new_state = PolicyState(last_scale_up_s=now)
        elif op == "scale_down":
            new_state = PolicyState(last_scale_up_s=new_state.last_scale_up_s)
        return Decision(op, n, why), replace(new_state, load_ref=state.load_ref, trend_per_s=state.trend_per_s,
                                             work_ref=state.work_ref, work_trend_per_s=state.work_trend_per_s,
                                             fleet_changed_s=state.fleet_changed_s, peak_load=state.peak_load,
                                             peak_load_s=state.peak_load_s)

    if current < lower:
        return out(lower, f"below lower bound {lower} (min {config.min_replicas}, "
                          f"rollout floor {spec.replica_floor})", state)
    if current > upper:
        return out(upper, f"above max_replicas {upper}", state)

    in_cold_start = state.last_scale_up_s is not None and now - state.last_scale_up_s < spec.cold_start_s

    wanted_up = max(assessment.load_replicas, assessment.urgent_replicas)
    if wanted_up > current and current < upper:
        if assessment.breach is not None:
            # Replicas asked for within cold_start_s have not had a chance to help yet; add
            # more only if the load itself (not just the breach) needs them.
            if in_cold_start and assessment.load_replicas <= current:
                return out(current, f"{assessment.breach}; waiting for starting replicas", PolicyState(
                    last_scale_up_s=state.last_scale_up_s))
            return out(wanted_up, assessment.breach, state)
        since = state.above_since_s if state.above_since_s is not None else now
        if now - since + 1e-6 >= spec.upscale_delay_s:
            return out(wanted_up, f"load needs {wanted_up} replicas: {assessment.load_basis}", state)
        return out(current, f"load above target for {now - since:.0f}s of {spec.upscale_delay_s:g}s",
                   PolicyState(above_since_s=since, last_scale_up_s=state.last_scale_up_s))

    want_down = clamp(assessment.down_replicas)
    if want_down < current and assessment.breach is None and not in_cold_start:
        since = state.below_since_s if state.below_since_s is not None else now
        peak = max(state.below_peak, want_down) if state.below_since_s is not None else want_down
        if now - since + 1e-6 >= spec.downscale_delay_s:
            if peak > current * spec.downscale_direct_below_share:
                peak = max(peak, current - max(1, math.floor(current * spec.downscale_max_fraction)))
            return out(peak, f"load {signals.ongoing_requests:.3g} fits {peak} replicas for "
                             f"{spec.downscale_delay_s:g}s", state)
        return out(current, f"load below target for {now - since:.0f}s of {spec.downscale_delay_s:g}s",
                   PolicyState(below_since_s=since, below_peak=peak, last_scale_up_s=state.last_scale_up_s))

    if assessment.breach:
        why = f"{assessment.breach} (at max_replicas {upper})"
    elif want_down < current and in_cold_start and state.last_scale_up_s is not None:
        why = f"load fits {want_down} but replicas added {now - state.last_scale_up_s:.0f}s ago are still starting"
    else:
        why = "load on target"
    return out(current, why, PolicyState(last_scale_up_s=state.last_scale_up_s))


def remember_peak(assessment: Assessment, config: PolicyConfig, state: PolicyState,
                  now: float) -> tuple[Assessment, PolicyState]:
    """Burst memory (`burst_memory_s`): the fewest replicas kept is at least `burst_memory_share` of
    the most the load asked for within the last `burst_memory_s`, so a burst shorter than a cold
    start finds the replicas the last one needed. The peak is the load's own (`load_replicas`), not
    a breach step's."""
    spec = config.spec
    if spec.burst_memory_s <= 0:
        return assessment, state
    load = float(assessment.load_replicas)
    if state.peak_load_s is None or load >= state.peak_load or now - state.peak_load_s > spec.burst_memory_s:
        state = replace(state, peak_load=load, peak_load_s=now)
    floor = math.ceil(spec.burst_memory_share * state.peak_load - 1e-9)
    if floor <= assessment.down_replicas:
        return assessment, state
    return replace(assessment, down_replicas=floor), state


def decide(
    signals: Signals, config: PolicyConfig, state: PolicyState, now: float
) -> tuple[Decision, PolicyState]:
    """The policy: a pure function of one snapshot, the arm's config and the policy's memory."""
    # Smoothed load trend (exponential average over look_back_period_s of the growth rate).
    trend, ref = state.trend_per_s, state.load_ref
    if ref is not None and now > ref[0]:
        dt = now - ref[0]
        instant = (signals.ongoing_requests - ref[1]) / dt
        trend += (instant - trend) * min(1.0, dt / config.spec.look_back_period_s)
    state = replace(state, load_ref=(now, signals.ongoing_requests), trend_per_s=trend)
    # The same for the ITL model's work, while it is known. The work reported is work done: when
    # replicas join or leave, or requests queue, it follows the capacity (a backlog builds or
    # drains), not the demand, so its trend counts only after a whole window of the same replicas
    # serving with no request queued at the handles and the TTFT p95 within its SLO.
    work = itl_model_work(signals, config)
    work_trend = 0.0
    if work is not None:
        work_trend, wref, changed = state.work_trend_per_s, state.work_ref, state.fleet_changed_s
        if ((wref is not None and signals.running_replicas != wref[2]) or signals.queued_requests > 0
                or (signals.ttft_p95_s is not None and signals.ttft_p95_s > config.spec.ttft_p95_s)):
            changed = now
        if changed is not None and now - changed < config.spec.look_back_period_s:
            work_trend = 0.0
        elif wref is not None and now > wref[0]:
            dt = now - wref[0]
            work_trend += ((work - wref[1]) / dt - work_trend) * min(1.0, dt / config.spec.look_back_period_s)
        state = replace(state, work_ref=(now, work, float(signals.running_replicas)), work_trend_per_s=work_trend,
                        fleet_changed_s=changed)
    assessment, state = remember_peak(assess(signals, config, trend, work_trend), config, state, now)
    return guard(assessment, signals, config, state, now)


def _mean_metric(metrics: dict[str, dict[Any, float]] | None, name: str,
                 reduce: Callable[[list[float]], float] = max) -> float | None:
    values = [v for v in ((metrics or {}).get(name) or {}).values() if v is not None and math.isfinite(v)]
    return reduce(values) if values else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def signals_from_context(ctx: Any, latency_over_replicas: str = "worst") -> Signals:
    """Read a Ray Serve `AutoscalingContext` into `Signals`. Latency takes the worst replica
    (one slow replica already breaks the SLO for its users), or with `latency_over_replicas`
    "mean" the replicas' mean; KV cache the mean; queued prompt tokens the sum (the policy
    divides by the running replicas)."""
    latency: Callable[[list[float]], float] = _mean if latency_over_replicas == "mean" else max
    try:
        custom = ctx.aggregated_metrics
    except Exception:  # noqa: BLE001 - a replica's broken metric must not stop autoscaling
        custom = None
    queued = ctx.total_queued_requests
    return Signals(
        running_replicas=ctx.current_num_replicas,
        target_replicas=ctx.target_num_replicas,
        ongoing_requests=float(ctx.total_num_requests or 0.0),
        queued_requests=float(queued or 0.0),
        ttft_p95_s=_mean_metric(custom, METRIC_TTFT_P95, reduce=latency),
        itl_p95_s=_mean_metric(custom, METRIC_ITL_P95, reduce=latency),
        kv_cache_usage=_mean_metric(custom, METRIC_KV_CACHE, reduce=_mean),
        queued_prompt_tokens=_mean_metric(custom, METRIC_QUEUED_PROMPT_TOKENS, reduce=sum),
        requests_per_s=_mean_metric(custom, METRIC_REQUESTS_PER_S, reduce=sum),
        prompt_tokens_per_s=_mean_metric(custom, METRIC_PROMPT_TOKENS_PER_S, reduce=sum),
        output_tokens_per_s=_mean_metric(custom, METRIC_OUTPUT_TOKENS_PER_S, reduce=sum),
    )


class CorralAutoscalingPolicy:
    """Ray Serve custom autoscaling policy (`AutoscalingConfig.policy.policy_function`).

    Serve instantiates the class once per deployment with `policy_kwargs` (built by
    `corral.cluster.spec.autoscaling.policy_kwargs`) and calls it with an
    `AutoscalingContext` every tick. The instance holds only the immutable config; all
    memory travels in `ctx.policy_state`, so a re-created instance continues seamlessly.
    """

    def __init__(self, **policy_kwargs: Any):
        self.config = PolicyConfig.from_kwargs(policy_kwargs)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        policy_state = dict(ctx.policy_state or {})
        state = PolicyState.from_dict(policy_state.get(STATE_KEY))
        now = ctx.current_time if ctx.current_time is not None else time.time()
        signals = signals_from_context(ctx, self.config.spec.latency_over_replicas)
        decision, new_state = decide(signals, self.config, state, now)
        policy_state[STATE_KEY] = new_state.to_dict()
        policy_state[LAST_DECISION_KEY] = {"operator": decision.operator, "replicas": decision.replicas,
                                           "reason": decision.reason, "time": now}
        if decision.operator != "hold":
            # Lands in the Serve controller's log: the audit trail of scale events and why.
            _log.info("corral autoscaler: %s %s %d -> %d: %s", self.config.arm, decision.operator,
                      ctx.target_num_replicas, decision.replicas, decision.reason)
        return decision.replicas, policy_state
