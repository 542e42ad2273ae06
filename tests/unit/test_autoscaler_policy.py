"""Properties of corral's autoscaling policy (pure: no Ray cluster is started)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from corral.autoscaler.policy import (
    STATE_KEY,
    CorralAutoscalingPolicy,
    PolicyConfig,
    PolicyState,
    Signals,
    assess,
    backlog_replicas,
    decide,
    demand_replicas,
    itl_model_replicas,
    itl_model_work,
    model_replicas,
    packing_target,
    remember_peak,
    request_engine_s,
    signals_from_context,
)
from corral.cluster.spec import parse_fleet
from corral.cluster.spec.autoscaling import (
    POLICY_IMPORT_PATH,
    AutoscalingSpec,
    check_against_arm,
    serve_autoscaling_config,
)

opt_latency = st.one_of(st.none(), st.floats(0, 30, allow_nan=False))


@st.composite
def configs(draw):
    lo = draw(st.integers(0, 8))
    hi = draw(st.integers(max(lo, 1), 16))
    spec = AutoscalingSpec(
        target_ongoing_requests=draw(st.floats(0.5, 64)),
        upscale_delay_s=draw(st.floats(0, 60)),
        downscale_delay_s=draw(st.floats(0, 600)),
        downscale_hysteresis=draw(st.floats(0, 0.9)),
        cold_start_s=draw(st.floats(0, 300)),
        breach_upscale_fraction=draw(st.floats(0.01, 2)),
        breach_upscale_proportional=draw(st.booleans()),
        replica_floor=draw(st.integers(0, 20)),
        prefill_tokens_per_s=draw(st.one_of(st.just(0.0), st.floats(10, 10000))),
        prefill_backlog_ttft_share=draw(st.floats(0.05, 2)),
        downscale_direct_below_share=draw(st.one_of(st.just(0.0), st.floats(0, 1))),
        latency_over_replicas=draw(st.sampled_from(["worst", "mean"])),
        engine_base_s=draw(st.floats(0, 1)),
        engine_per_decode_seq_s=draw(st.one_of(st.just(0.0), st.floats(1e-4, 1))),
        engine_per_prefill_token_s=draw(st.floats(0, 0.01)),
        slo_packing_itl_share=draw(st.one_of(st.just(0.0), st.floats(0, 1))),
        model_sizing_utilisation=draw(st.one_of(st.just(0.0), st.floats(0.05, 1))),
        itl_model_share=draw(st.one_of(st.just(0.0), st.floats(0, 1))),
        itl_model_horizon_s=draw(st.floats(0, 300)),
        backlog_drain_s=draw(st.one_of(st.just(0.0), st.floats(1, 600))),
        waiting_drain_s=draw(st.one_of(st.just(0.0), st.floats(1, 600))),
        burst_memory_s=draw(st.one_of(st.just(0.0), st.floats(1, 1800))),
        burst_memory_share=draw(st.floats(0, 1)),
    )
    return PolicyConfig(spec=spec, min_replicas=lo, max_replicas=hi, max_num_seqs=draw(st.integers(1, 256)))


@st.composite
def signals(draw, max_target=24):
    return Signals(
        running_replicas=draw(st.integers(0, max_target)),
        target_replicas=draw(st.integers(0, max_target)),
        ongoing_requests=draw(st.floats(0, 5000, allow_nan=False)),
        queued_requests=draw(st.floats(0, 1000, allow_nan=False)),
        ttft_p95_s=draw(opt_latency),
        itl_p95_s=draw(opt_latency),
        kv_cache_usage=draw(st.one_of(st.none(), st.floats(0, 1))),
        queued_prompt_tokens=draw(st.one_of(st.none(), st.floats(0, 100000, allow_nan=False))),
        requests_per_s=draw(st.one_of(st.none(), st.floats(0, 500, allow_nan=False))),
        prompt_tokens_per_s=draw(st.one_of(st.none(), st.floats(0, 100000, allow_nan=False))),
        output_tokens_per_s=draw(st.one_of(st.none(), st.floats(0, 100000, allow_nan=False))),
    )


@settings(max_examples=300, deadline=None)
@given(cfg=configs(), sigs=st.lists(signals(), min_size=1, max_size=12), dt=st.floats(0.1, 120))
def test_never_outside_bounds_nor_below_rollout_floor(cfg, sigs, dt):
    state, now = PolicyState(), 1000.0
    lower = min(max(cfg.min_replicas, cfg.spec.replica_floor), cfg.max_replicas)
    for s in sigs:
        decision, state = decide(s, cfg, state, now)
        assert cfg.min_replicas <= decision.replicas <= cfg.max_replicas
        # Mid-rollout (floor > 0) the arm never goes below its floor (the floor yields only to max).
        assert decision.replicas >= lower
        assert decision.operator == ("scale_up" if decision.replicas > s.target_replicas else
                                     "scale_down" if decision.replicas < s.target_replicas else "hold")
        assert decision.reason
        now += dt


@settings(max_examples=200, deadline=None)
@given(cfg=configs(), s=signals())
def test_breach_never_scales_down(cfg, s):
    s = Signals(**{**s.__dict__, "ttft_p95_s": cfg.spec.ttft_p95_s * 2})
    decision, _ = decide(s, cfg, PolicyState(), 0.0)
    assert decision.replicas >= min(s.target_replicas, cfg.max_replicas)


def test_scales_up_fast_on_slo_breach_and_down_slowly():
    spec = AutoscalingSpec(target_ongoing_requests=10, upscale_delay_s=30, downscale_delay_s=120,
                           cold_start_s=60, downscale_hysteresis=0.2)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=10, max_num_seqs=32)
    # Load on target but TTFT over the SLO: add replicas at once, no upscale delay.
    breach = Signals(running_replicas=4, target_replicas=4, ongoing_requests=40, ttft_p95_s=5.0)
    d, state = decide(breach, cfg, PolicyState(), 0.0)
    assert (d.operator, d.replicas) == ("scale_up", 5) and "ttft" in d.reason
    # Same breach 10 s later: the new replica is still cold; hold.
    d, state = decide(Signals(4, 5, 40, ttft_p95_s=5.0), cfg, state, 10.0)
    assert d.operator == "hold" and "starting" in d.reason
    # Load drops to 12: 2 replicas suffice, but only after downscale_delay_s of low load.
    low = Signals(running_replicas=5, target_replicas=5, ongoing_requests=12)
    t = 100.0
    d, state = decide(low, cfg, state, t)
    assert d.operator == "hold"
    d, state = decide(low, cfg, state, t + 119)
    assert d.operator == "hold"
    d, state = decide(low, cfg, state, t + 120)
    # Removed slowly: at most downscale_max_fraction (25%, at least 1) per step, each step
    # waiting downscale_delay_s again.
    assert (d.operator, d.replicas) == ("scale_down", 4)
    low = Signals(running_replicas=4, target_replicas=4, ongoing_requests=12)
    d, state = decide(low, cfg, state, t + 121)
    assert d.operator == "hold"
    d, state = decide(low, cfg, state, t + 241)
    assert (d.operator, d.replicas) == ("scale_down", 3)


def test_latency_breach_adds_replicas_in_proportion_to_the_overshoot():
    spec = AutoscalingSpec(target_ongoing_requests=10, itl_p95_s=0.4, ttft_p95_s=2.0, breach_upscale_fraction=0.25)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=32)
    at = lambda **kw: decide(Signals(running_replicas=20, target_replicas=20, ongoing_requests=20, **kw),
                             cfg, PolicyState(), 0.0)[0]
    # ITL p95 4 % over its SLO: one replica (20 x 0.04 = 0.8, at least 1), not a quarter of 20.
    d = at(itl_p95_s=0.416)
    assert (d.operator, d.replicas) == ("scale_up", 21) and "itl" in d.reason
    # 10 % over: 20 x 0.1 = 2.
    assert at(itl_p95_s=0.44).replicas == 22
    # Far over (TTFT 3x the SLO): capped at breach_upscale_fraction, 25 % of 20 = 5.
    assert at(ttft_p95_s=6.0).replicas == 25
    # A queue has no "how far over": always breach_upscale_fraction.
    assert at(queued_requests=40.0).replicas == 25
    # Switched off: every breach adds breach_upscale_fraction, as before.
    fixed = PolicyConfig(spec=spec.model_copy(update={"breach_upscale_proportional": False}),
                         min_replicas=1, max_replicas=64, max_num_seqs=32)
    d, _ = decide(Signals(20, 20, 20, itl_p95_s=0.416), fixed, PolicyState(), 0.0)
    assert d.replicas == 25


@settings(max_examples=300, deadline=None)
@given(cfg=configs(), s=signals(), over=st.floats(1.0001, 50), which=st.sampled_from(["ttft", "itl"]))
def test_proportional_breach_step_lies_between_one_replica_and_the_fixed_step(cfg, s, over, which):
    slo = cfg.spec.ttft_p95_s if which == "ttft" else cfg.spec.itl_p95_s
    s = Signals(**{**s.__dict__, "ttft_p95_s": None, "itl_p95_s": None, f"{which}_p95_s": slo * over})
    # With the ITL model an ITL p95 over its SLO is a breach only where the model confirms it (tested below).
    cfg = PolicyConfig(spec=cfg.spec.model_copy(update={"itl_model_share": 0.0}), min_replicas=cfg.min_replicas,
                       max_replicas=cfg.max_replicas, max_num_seqs=cfg.max_num_seqs)
    prop = assess(s, PolicyConfig(spec=cfg.spec.model_copy(update={"breach_upscale_proportional": True}),
                                  min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
                                  max_num_seqs=cfg.max_num_seqs))
    fixed = assess(s, PolicyConfig(spec=cfg.spec.model_copy(update={"breach_upscale_proportional": False}),
                                   min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
                                   max_num_seqs=cfg.max_num_seqs))
    assert prop.breach is not None and prop.breach == fixed.breach
    assert max(prop.load_replicas, s.target_replicas + 1) <= prop.urgent_replicas <= fixed.urgent_replicas
    # A bigger overshoot never asks for fewer replicas.
    worse = Signals(**{**s.__dict__, f"{which}_p95_s": slo * over * 1.5})
    assert assess(worse, cfg).urgent_replicas >= assess(s, cfg).urgent_replicas


def test_direct_downscale_after_a_burst_only_when_the_whole_window_was_light():
    """After a burst: with downscale_direct_below_share the fleet drops to what the load asked for
    over the whole delay in one step; one busy moment in the window keeps the gradual step."""
    spec = AutoscalingSpec(target_ongoing_requests=4, downscale_delay_s=60, cold_start_s=0, trend_horizon_s=0,
                           downscale_hysteresis=0.0, downscale_direct_below_share=0.5)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64)

    def run(loads):
        state, d = PolicyState(), None
        for i, load in enumerate(loads):
            d, state = decide(Signals(running_replicas=40, target_replicas=40, ongoing_requests=load), cfg, state,
                              100.0 + 10 * i)
        return d

    assert run([20.0] * 7).replicas == 5  # 20 requests fit 5 replicas for 60 s: 40 -> 5 at once
    assert run([20.0] * 3 + [100.0] + [20.0] * 3).replicas == 30  # 25 replicas once: > 0.5 x 40, by 25%
    gradual = PolicyConfig(spec=spec.model_copy(update={"downscale_direct_below_share": 0.0}), min_replicas=1,
                           max_replicas=64)
    state = PolicyState()
    for i in range(7):
        d, state = decide(Signals(running_replicas=40, target_replicas=40, ongoing_requests=20.0), gradual, state,
                          100.0 + 10 * i)
    assert d.replicas == 30


def test_prefill_backlog_adds_replicas_without_waiting():
    """Prompt tokens waiting for their prefill, as seconds of prefill per replica, breach at
    prefill_backlog_ttft_share of the TTFT SLO, though the request count is on target."""
    spec = AutoscalingSpec(target_ongoing_requests=4, upscale_delay_s=60, ttft_p95_s=2.0,
                           prefill_tokens_per_s=200.0, prefill_backlog_ttft_share=0.5)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=16)
    on_target = dict(running_replicas=4, target_replicas=4, ongoing_requests=16.0)
    # 4 replicas x 200 tokens = 1 s of prefill each: = 0.5 x 2 s, not above it.
    d, _ = decide(Signals(**on_target, queued_prompt_tokens=800.0), cfg, PolicyState(), 0.0)
    assert d.operator == "hold"
    d, _ = decide(Signals(**on_target, queued_prompt_tokens=1200.0), cfg, PolicyState(), 0.0)
    assert (d.operator, d.replicas) == ("scale_up", 5) and "prefill backlog 1.5s per replica" in d.reason
    # Without a prefill throughput the signal is not used; without the signal neither.
    off = PolicyConfig(spec=spec.model_copy(update={"prefill_tokens_per_s": 0.0}), min_replicas=1, max_replicas=16)
    assert decide(Signals(**on_target, queued_prompt_tokens=1e6), off, PolicyState(), 0.0)[0].operator == "hold"
    assert decide(Signals(**on_target), cfg, PolicyState(), 0.0)[0].operator == "hold"


def test_hysteresis_keeps_replicas_just_below_target():
    spec = AutoscalingSpec(target_ongoing_requests=10, downscale_delay_s=0, downscale_hysteresis=0.25)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=10, max_num_seqs=32)
    # 25 requests on 3 replicas: 2 would run 12.5 each, above 7.5 = 10 x (1 - 0.25): keep 3.
    d, _ = decide(Signals(3, 3, 25), cfg, PolicyState(), 0.0)
    assert d.operator == "hold"
    d, _ = decide(Signals(3, 3, 14), cfg, PolicyState(), 0.0)
    assert (d.operator, d.replicas) == ("scale_down", 2)


def test_upscale_waits_for_delay_without_breach():
    spec = AutoscalingSpec(target_ongoing_requests=10, upscale_delay_s=10)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=10, max_num_seqs=32)
    s = Signals(2, 2, 30)  # 15 per replica, under max_num_seqs: no queue, no breach
    d, state = decide(s, cfg, PolicyState(), 0.0)
    assert d.operator == "hold"
    d, state = decide(s, cfg, state, 10.0)
    assert (d.operator, d.replicas) == ("scale_up", 3)


def test_rollout_floor_lifts_replicas_immediately():
    spec = AutoscalingSpec(replica_floor=4)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=6, max_num_seqs=16)
    d, _ = decide(Signals(1, 1, 0.0), cfg, PolicyState(), 0.0)
    assert (d.operator, d.replicas) == ("scale_up", 4) and "floor" in d.reason


@pytest.mark.parametrize(
    "field,value",
    [
        ("target_ongoing_requests", 0),
        ("ttft_p95_s", -1),
        ("itl_p95_s", 0),
        ("downscale_hysteresis", 1.0),
        ("kv_cache_high", 1.5),
        ("upscale_delay_s", -5),
        ("cold_start_s", -1),
        ("replica_floor", -1),
        ("policy", "fastest"),
        ("breach_upscale_proportional", "maybe"),
        ("backlog_drain_s", 0.5),
        ("waiting_drain_s", 0.5),
        ("burst_memory_s", -1),
        ("burst_memory_share", 1.5),
    ],
)
def test_bad_settings_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as exc:
        AutoscalingSpec(**{field: value})
    text = str(exc.value)
    assert field in text and repr(value) in text


def test_bad_setting_in_fleet_file_names_the_path():
    from corral.cluster.spec import SpecError

    doc = {"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"},
                     "autoscaling": {"downscale_hysteresis": 2}}]}
    with pytest.raises(SpecError) as exc:
        parse_fleet(doc)
    assert "arms[a].autoscaling.downscale_hysteresis" in str(exc.value)
    assert "2" in str(exc.value)


def test_cross_checks_name_both_fields():
    with pytest.raises(ValueError, match=r"replica_floor \(9\).*replicas.max \(4\)"):
        check_against_arm(AutoscalingSpec(replica_floor=9), max_num_seqs=16, min_replicas=1, max_replicas=4)
    with pytest.raises(ValueError, match=r"target_ongoing_requests \(100.0\).*max_num_seqs \(16\)"):
        check_against_arm(AutoscalingSpec(target_ongoing_requests=100), max_num_seqs=16, min_replicas=1,
                          max_replicas=4)


def test_policy_kwargs_round_trip_and_unknown_key_refused():
    cfg = serve_autoscaling_config(AutoscalingSpec(replica_floor=2), arm="a", min_replicas=1, max_replicas=5,
                                   initial_replicas=1, max_num_seqs=16)
    assert cfg["policy"]["policy_function"] == POLICY_IMPORT_PATH
    # Serve must not delay decisions a second time on top of the policy's own delays.
    assert cfg["upscale_delay_s"] == cfg["downscale_delay_s"] == 0.0
    pol = CorralAutoscalingPolicy(**cfg["policy"]["policy_kwargs"])
    assert pol.config.lower_bound == 2 and pol.config.max_replicas == 5
    with pytest.raises(ValidationError, match="bogus"):
        CorralAutoscalingPolicy(**cfg["policy"]["policy_kwargs"], bogus=1)
    plain = serve_autoscaling_config(AutoscalingSpec(policy="serve-default", upscale_delay_s=7), arm="a",
                                     min_replicas=1, max_replicas=5, initial_replicas=1, max_num_seqs=16)
    assert "policy" not in plain and plain["upscale_delay_s"] == 7


class _Ctx:
    """The attributes of Ray Serve's AutoscalingContext the adapter reads."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_adapter_reads_context_and_keeps_state_in_policy_state():
    spec = AutoscalingSpec(target_ongoing_requests=8, ttft_p95_s=1.0, upscale_delay_s=30)
    pol = CorralAutoscalingPolicy(**spec.model_dump(exclude={"policy", "metrics_interval_s"}),
                                  min_replicas=1, max_replicas=8, max_num_seqs=16, arm="a")
    ctx = _Ctx(current_num_replicas=2, target_num_replicas=2, total_num_requests=16.0, total_queued_requests=0.0,
               aggregated_metrics={"corral_ttft_p95_s": {"r1": 0.5, "r2": 3.0}}, current_time=50.0,
               policy_state={"serve_internal": 1})
    n, state = pol(ctx)
    assert n == 3  # the slow replica's TTFT breaches the SLO
    assert state["serve_internal"] == 1 and state[STATE_KEY]["last_scale_up_s"] == 50.0
    assert "ttft" in state["corral_last_decision"]["reason"]


def test_adapter_through_ray_serve_wrapper():
    """The adapter as Serve's controller runs it: resolved from the import path, wrapped."""
    pytest.importorskip("ray.serve")
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    cfg = AutoscalingConfig(**serve_autoscaling_config(
        AutoscalingSpec(target_ongoing_requests=8), arm="a", min_replicas=1, max_replicas=6,
        initial_replicas=1, max_num_seqs=16))
    policy = _apply_autoscaling_config(_resolve_policy_callable(cfg.policy))
    ctx = AutoscalingContext(
        deployment_id=None, deployment_name="a", app_name="corral", current_num_replicas=2,
        target_num_replicas=2, running_replicas=[], total_num_requests=80.0, total_queued_requests=30.0,
        aggregated_metrics={}, raw_metrics={}, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=6, policy_state={}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=10.0, config=cfg)
    n, state = policy(ctx)
    assert n == 6  # 80 requests / 8 per replica = 10, capped at max_replicas
    assert state["corral_last_decision"]["operator"] == "scale_up"


@settings(max_examples=150, deadline=None)
@given(cfg=configs(), s=signals(), more=st.floats(0, 2000, allow_nan=False), rising=st.floats(0, 5))
def test_more_load_never_asks_for_fewer_replicas(cfg, s, more, rising):
    """assess is monotone in load: more ongoing requests (all else equal) never lowers the
    replicas wanted up, nor those kept on the way down."""
    heavier = Signals(**{**s.__dict__, "ongoing_requests": s.ongoing_requests + more})
    a, b = assess(s, cfg, rising), assess(heavier, cfg, rising)
    assert max(b.load_replicas, b.urgent_replicas) >= max(a.load_replicas, a.urgent_replicas)
    assert b.down_replicas >= a.down_replicas
    # A steeper rise never asks for less either.
    c = assess(s, cfg, rising + 1.0)
    assert max(c.load_replicas, c.urgent_replicas) >= max(a.load_replicas, a.urgent_replicas)
    # Nor do more prompt tokens waiting for their prefill.
    fuller = Signals(**{**s.__dict__, "queued_prompt_tokens": (s.queued_prompt_tokens or 0.0) + more})
    d = assess(fuller, cfg, rising)
    assert max(d.load_replicas, d.urgent_replicas) >= max(a.load_replicas, a.urgent_replicas)
    assert d.down_replicas >= a.down_replicas


@settings(max_examples=150, deadline=None)
@given(cfg=configs(), s=signals(), more=st.floats(0, 2000, allow_nan=False), dt=st.floats(0, 600),
       history=st.lists(signals(), max_size=6))
def test_decide_is_monotone_in_load_from_any_state(cfg, s, more, dt, history):
    state, now = PolicyState(), 100.0
    for h in history:  # some memory: delay windows, trend, last scale-up
        _, state = decide(h, cfg, state, now)
        now += 15.0
    heavier = Signals(**{**s.__dict__, "ongoing_requests": s.ongoing_requests + more})
    light, _ = decide(s, cfg, state, now + dt)
    heavy, _ = decide(heavier, cfg, state, now + dt)
    assert heavy.replicas >= light.replicas
    fuller = Signals(**{**s.__dict__, "queued_prompt_tokens": (s.queued_prompt_tokens or 0.0) + more})
    full, _ = decide(fuller, cfg, state, now + dt)
    assert full.replicas >= light.replicas


@settings(max_examples=150, deadline=None)
@given(cfg=configs(), sigs=st.lists(signals(), min_size=1, max_size=12), dt=st.floats(0.1, 700))
def test_at_most_the_stated_fraction_removed_per_step(cfg, sigs, dt):
    state, now = PolicyState(), 0.0
    for s in sigs:
        decision, state = decide(s, cfg, state, now)
        current = s.target_replicas
        if cfg.lower_bound <= current <= cfg.max_replicas:
            # downscale_max_fraction of the current target, at least one replica, per decision;
            # more only where the load asked for at most downscale_direct_below_share of it.
            step = current - max(1, math.floor(current * cfg.spec.downscale_max_fraction))
            # Never below what the load of this very snapshot needs (bounds permitting).
            need = min(max(assess(s, cfg).down_replicas, cfg.lower_bound), cfg.max_replicas)
            assert decision.replicas >= min(need, current)
            if decision.replicas < step:
                share = cfg.spec.downscale_direct_below_share
                assert decision.replicas <= max(math.floor(current * share), cfg.lower_bound), (decision, current)
        now += dt


ENGINE = dict(engine_base_s=0.1, engine_per_decode_seq_s=0.05, engine_per_prefill_token_s=0.004)


def test_model_sizing_costs_the_reported_work_on_the_engine_model():
    """Replicas = engine-seconds per second of the reported work / the utilisation share; each
    output token costs 1/target of a decode step at the batch target."""
    spec = AutoscalingSpec(target_ongoing_requests=4, model_sizing_utilisation=0.5, trend_horizon_s=0,
                           downscale_hysteresis=0.0, **ENGINE)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=8)
    sig = Signals(running_replicas=4, target_replicas=4, ongoing_requests=2.0,
                  requests_per_s=5.0, prompt_tokens_per_s=250.0, output_tokens_per_s=40.0)
    # 5 x 0.1 (prefill steps' base) + 250 x 0.004 (prompt tokens) + 40 x (0.1 + 0.05 x 4) / 4 = 4.5 s/s
    assert model_replicas(sig, cfg) == pytest.approx(4.5 / 0.5)
    a = assess(sig, cfg)
    assert a.load_replicas == 9 and a.down_replicas == 9  # not the 1 replica 2 requests in flight ask for
    # Off, or a rate not reported: requests in flight over the target, as before.
    assert model_replicas(replace_sig(sig, output_tokens_per_s=None), cfg) is None
    off = PolicyConfig(spec=spec.model_copy(update={"model_sizing_utilisation": 0.0}), max_replicas=64)
    assert model_replicas(sig, off) is None and assess(sig, off).load_replicas == 1


def test_slo_packing_raises_the_target_to_the_batch_the_engine_model_allows():
    spec = AutoscalingSpec(target_ongoing_requests=3, itl_p95_s=0.4, ttft_p95_s=2.0, slo_packing_itl_share=0.75,
                           **ENGINE)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=8)
    # 2 requests per replica: step 0.2 s; reported ITL p95 0.2 s; budget 0.3 s -> batch (0.3 - 0.1) / 0.05 = 4.
    sig = Signals(running_replicas=5, target_replicas=5, ongoing_requests=10.0, itl_p95_s=0.2, ttft_p95_s=0.5)
    assert packing_target(sig, cfg) == pytest.approx(4.0)
    # Never below the fixed target, never above max_num_seqs; the fixed target when TTFT is short of slack.
    assert packing_target(replace_sig(sig, itl_p95_s=0.39), cfg) == 3
    assert packing_target(replace_sig(sig, itl_p95_s=0.01), cfg) == 8
    assert packing_target(replace_sig(sig, ttft_p95_s=1.9), cfg) == 3
    assert packing_target(replace_sig(sig, itl_p95_s=None), cfg) == 3


def test_latency_over_replicas_mean_averages_the_replicas_p95s():
    class Ctx:
        current_num_replicas = target_num_replicas = 2
        total_num_requests, total_queued_requests = 4.0, 0.0
        aggregated_metrics = {"corral_itl_p95_s": {"a": 0.2, "b": 0.6}, "corral_ttft_p95_s": {"a": 1.0, "b": 3.0}}

    worst, mean = signals_from_context(Ctx()), signals_from_context(Ctx(), "mean")
    assert (worst.itl_p95_s, worst.ttft_p95_s) == (0.6, 3.0)
    assert mean.itl_p95_s == pytest.approx(0.4) and mean.ttft_p95_s == pytest.approx(2.0)
    with pytest.raises(ValidationError, match="latency_over_replicas"):
        AutoscalingSpec(latency_over_replicas="median")


def replace_sig(sig: Signals, **kw) -> Signals:
    from dataclasses import replace

    return replace(sig, **kw)


ITL_SPEC = dict(target_ongoing_requests=3, itl_p95_s=0.4, ttft_p95_s=2.0, itl_model_share=0.5, trend_horizon_s=0,
                downscale_hysteresis=0.0, slo_packing_itl_share=0.0, **ENGINE)


def test_itl_model_sizes_for_the_mean_itl_with_prefill_pauses():
    """N >= W / (1 - base / (share x SLO)), W the reported work's engine-seconds per second that slow
    a request's tokens (the prompt tokens computed in its steps, each output token's decode share;
    a prompt adds no step base of its own: vLLM computes it in the running batch's steps)."""
    cfg = PolicyConfig(spec=AutoscalingSpec(**ITL_SPEC), min_replicas=1, max_replicas=64, max_num_seqs=8)
    sig = Signals(running_replicas=4, target_replicas=4, ongoing_requests=2.0,
                  requests_per_s=5.0, prompt_tokens_per_s=375.0, output_tokens_per_s=40.0)
    # 375 x 0.004 + 40 x 0.05 = 3.5 s/s (the 5 requests/s add nothing); budget 0.5 x 0.4 = 0.2 s, so
    # 1 - 0.1 / 0.2 = 0.5.
    assert itl_model_work(sig, cfg) == pytest.approx(3.5)
    assert itl_model_replicas(sig, cfg) == pytest.approx(7.0)
    # The model's mean ITL on those 7 replicas is base / (1 - W / N) = 0.1 / 0.5 = the budget.
    assert 0.1 / (1 - 3.5 / 7.0) == pytest.approx(0.5 * 0.4)
    a = assess(sig, cfg)
    assert a.load_replicas == 7 and a.down_replicas == 7  # not the 1 replica 2 requests in flight ask for
    # A rising work trend is carried itl_model_horizon_s ahead (60 s by default): +0.01 s/s per s -> +0.6 s/s.
    assert assess(sig, cfg, work_rising_per_s=0.01).load_replicas == math.ceil((3.5 + 0.6) / 0.5 - 1e-9)
    assert assess(sig, cfg, work_rising_per_s=0.01).down_replicas == 7  # scale-down sizes for the work now
    # Off, no engine model, a rate missing, or a share at or below a bare decode step: no model.
    for update in ({"itl_model_share": 0.0}, {"engine_per_decode_seq_s": 0.0}, {"itl_model_share": 0.25}):
        off = PolicyConfig(spec=cfg.spec.model_copy(update=update), max_replicas=64)
        assert itl_model_replicas(sig, off) is None and assess(sig, off).load_replicas == 1
    assert itl_model_replicas(replace_sig(sig, output_tokens_per_s=None), cfg) is None
    assert itl_model_work(replace_sig(sig, requests_per_s=50.0), cfg) == pytest.approx(3.5)


def test_itl_breach_counts_only_where_the_model_finds_too_few_replicas():
    cfg = PolicyConfig(spec=AutoscalingSpec(**ITL_SPEC), min_replicas=1, max_replicas=64, max_num_seqs=8)
    # The model needs 7 replicas; 8 serve: a p95 over the SLO (one short answer caught by a prefill) is no breach.
    enough = Signals(running_replicas=8, target_replicas=8, ongoing_requests=6.0, itl_p95_s=0.6,
                     requests_per_s=5.0, prompt_tokens_per_s=375.0, output_tokens_per_s=40.0)
    a = assess(enough, cfg)
    assert a.breach is None and a.urgent_replicas == 0
    decision, _ = decide(enough, cfg, PolicyState(), 0.0)
    assert decision.replicas == 8
    # 6 serve: the model confirms it, and the breach adds replicas without waiting.
    short = replace_sig(enough, running_replicas=6, target_replicas=6)
    b = assess(short, cfg)
    assert b.breach is not None and "itl" in b.breach and b.urgent_replicas >= 7
    decision, _ = decide(short, cfg, PolicyState(), 0.0)
    assert decision.operator == "scale_up" and decision.replicas >= 7
    # Without the model the reported p95 alone is a breach, as before.
    off = PolicyConfig(spec=cfg.spec.model_copy(update={"itl_model_share": 0.0}), max_replicas=64, max_num_seqs=8)
    assert assess(enough, off).breach is not None


def test_itl_model_work_trend_counts_only_after_a_steady_window():
    """The work trend builds while the same replicas serve with no queue and no TTFT breach, and is
    dropped for a look-back window after the serving replicas change in number or requests queue."""
    spec = AutoscalingSpec(**{**ITL_SPEC, "itl_model_horizon_s": 60.0, "upscale_delay_s": 0.0})
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=8)

    def sig(t: float, running: int = 10, queued: float = 0.0) -> Signals:
        # Output tokens grow 1/s per second: work grows 0.05 s/s per second.
        return Signals(running_replicas=running, target_replicas=running, ongoing_requests=8.0, queued_requests=queued,
                       requests_per_s=2.0, prompt_tokens_per_s=0.0, output_tokens_per_s=20.0 + t)

    state = PolicyState()
    for t in range(0, 60, 2):
        _, state = decide(sig(float(t)), cfg, state, float(t))
    assert state.work_trend_per_s == pytest.approx(0.05, rel=0.05)
    # A replica joins: the trend is dropped for look_back_period_s (20 s), then builds again.
    _, joined = decide(sig(60.0, running=11), cfg, state, 60.0)
    assert joined.work_trend_per_s == 0.0 and joined.fleet_changed_s == 60.0
    _, later = decide(sig(70.0, running=11), cfg, joined, 70.0)
    assert later.work_trend_per_s == 0.0
    _, queued = decide(sig(62.0, queued=1.0), cfg, state, 62.0)
    assert queued.work_trend_per_s == 0.0
    # The state survives Serve's policy_state round trip.
    assert PolicyState.from_dict(state.to_dict()) == state


def test_demand_sizing_costs_the_arriving_requests_and_drains_the_backlog():
    """Replicas = (arrivals + waiting / backlog_drain_s) x a request's engine-seconds: its prompt
    tokens, and its answer's tokens a 1/target share of a decode step of `target` sequences.
    Arrivals = reported prefills per second + the growth of the requests in the system."""
    spec = AutoscalingSpec(target_ongoing_requests=3, backlog_drain_s=30, trend_horizon_s=0,
                           downscale_hysteresis=0.0, slo_packing_itl_share=0.0, **ENGINE)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=8)
    sig = Signals(running_replicas=4, target_replicas=4, ongoing_requests=20.0,
                  requests_per_s=5.0, prompt_tokens_per_s=250.0, output_tokens_per_s=40.0)
    # A request: 50 prompt tokens x 0.004 + 8 answer tokens x (0.1 + 0.05 x 3) / 3 = 0.8667 s.
    per_request = (250 * 0.004 + 40 * (0.1 + 0.05 * 3) / 3) / 5
    assert demand_replicas(sig, cfg, 3.0, 0.0) == pytest.approx(5 * per_request)
    assert assess(sig, cfg).load_replicas == 5  # not the 7 that 20 requests in flight at 3 each ask for
    # The growth of the requests in the system arrives too (1 more per second).
    assert demand_replicas(sig, cfg, 3.0, 1.0) == pytest.approx(6 * per_request)
    # 30 requests waiting at the handles (and 2 beyond the 4 x 8 batch slots): drained within 30 s.
    backlog = replace_sig(sig, ongoing_requests=64.0, queued_requests=30.0)
    assert demand_replicas(backlog, cfg, 3.0, 0.0) == pytest.approx((5 + 32 / 30) * per_request)
    assert assess(backlog, cfg).load_replicas == 6  # the 64 requests in the system would ask for 22
    # Off, a rate not reported, or nothing served yet (no lengths known): sized by requests in flight.
    off = PolicyConfig(spec=spec.model_copy(update={"backlog_drain_s": 0.0}), max_replicas=64, max_num_seqs=8)
    assert demand_replicas(sig, off, 3.0, 0.0) is None and assess(sig, off).load_replicas == 7
    assert demand_replicas(replace_sig(sig, prompt_tokens_per_s=None), cfg, 3.0, 0.0) is None
    assert demand_replicas(replace_sig(sig, requests_per_s=0.0), cfg, 3.0, 0.0) is None
    # Fewer than one request prefilled in the 20 s look-back window: no request length to cost.
    assert demand_replicas(replace_sig(sig, requests_per_s=0.04), cfg, 3.0, 0.0) is None
    assert demand_replicas(replace_sig(sig, requests_per_s=0.05), cfg, 3.0, 0.0) is not None
    assert assess(replace_sig(sig, requests_per_s=0.0), cfg).load_replicas == 7


def test_backlog_sizing_packs_the_requests_in_service_and_drains_the_waiting_ones():
    """With `waiting_drain_s` the requests in service (and the trend) ask for a replica per
    `target` as before; the waiting ones (queued at the handles, or beyond the replicas' batch
    slots) for their engine time over `waiting_drain_s` (a request's mean on the engine model).
    Nothing waiting: the same replicas as without it."""
    spec = AutoscalingSpec(target_ongoing_requests=3, waiting_drain_s=10, trend_horizon_s=30,
                           downscale_hysteresis=0.0, slo_packing_itl_share=0.0, **ENGINE)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=8)
    off = PolicyConfig(spec=spec.model_copy(update={"waiting_drain_s": 0.0}), max_replicas=64, max_num_seqs=8)
    sig = Signals(running_replicas=4, target_replicas=4, ongoing_requests=20.0,
                  requests_per_s=5.0, prompt_tokens_per_s=250.0, output_tokens_per_s=40.0)
    per_request = (250 * 0.004 + 40 * (0.1 + 0.05 * 3) / 3) / 5  # 0.8667 s, as demand sizing costs it
    assert request_engine_s(sig, cfg, 3.0) == pytest.approx(per_request)
    # Nothing waiting: 20 requests in service at 3 each, and the trend (0.1/s x 30 s) as before.
    assert backlog_replicas(sig, cfg, 3.0) == 0.0
    assert assess(sig, cfg, 0.1).load_replicas == assess(sig, off, 0.1).load_replicas == 8
    # 30 queued at the handles and 2 beyond the 4 x 8 slots: 32 in service (11 replicas at 3 each),
    # the 32 waiting drained within 10 s (32 / 10 x 0.8667 = 2.77 replicas), where packed at 3
    # each they asked for 11 more.
    backlog = replace_sig(sig, ongoing_requests=64.0, queued_requests=30.0)
    assert backlog_replicas(backlog, cfg, 3.0) == pytest.approx(32 / 10 * per_request)
    assert assess(backlog, cfg).load_replicas == math.ceil(32 / 3 + 32 / 10 * per_request) == 14
    assert assess(backlog, off).load_replicas == 22
    # The trend still counts at the batch target.
    assert assess(backlog, cfg, 0.2).load_replicas == math.ceil((32 + 0.2 * 30) / 3 + 32 / 10 * per_request)
    # A longer drain asks for fewer; without the engine model or the rates: packed, as when off.
    slow = PolicyConfig(spec=spec.model_copy(update={"waiting_drain_s": 60.0}), max_replicas=64, max_num_seqs=8)
    assert assess(backlog, slow).load_replicas == math.ceil(32 / 3 + 32 / 60 * per_request) == 12
    no_model = PolicyConfig(spec=spec.model_copy(update={"engine_per_decode_seq_s": 0.0}), max_replicas=64,
                            max_num_seqs=8)
    assert backlog_replicas(backlog, no_model, 3.0) is None and assess(backlog, no_model).load_replicas == 22
    assert assess(replace_sig(backlog, output_tokens_per_s=None), cfg).load_replicas == 22
    assert assess(replace_sig(backlog, requests_per_s=0.04), cfg).load_replicas == 22
    # Scale-down keeps counting every request in the system.
    assert assess(backlog, cfg).down_replicas == assess(backlog, off).down_replicas


def test_burst_memory_keeps_the_peak_the_load_asked_for_until_it_is_older_than_the_memory():
    spec = AutoscalingSpec(target_ongoing_requests=3, trend_horizon_s=0, downscale_hysteresis=0.0, upscale_delay_s=0,
                           downscale_delay_s=0, cold_start_s=0, slo_packing_itl_share=0.0, burst_memory_s=600)
    cfg = PolicyConfig(spec=spec, min_replicas=1, max_replicas=64, max_num_seqs=8)

    def load(ongoing: float, current: int) -> Signals:
        return Signals(running_replicas=current, target_replicas=current, ongoing_requests=ongoing)

    burst, state = decide(load(30.0, 2), cfg, PolicyState(), 0.0)
    assert burst.replicas == 10 and state.peak_load == 10 and state.peak_load_s == 0.0
    # 100 s later the load asks for 2: the 10 the burst needed stay.
    quiet, state = decide(load(6.0, 10), cfg, state, 100.0)
    assert quiet.operator == "hold" and quiet.replicas == 10 and state.peak_load == 10
    # Without the memory the same quiet load starts the scale-down (a quarter per step).
    off = PolicyConfig(spec=spec.model_copy(update={"burst_memory_s": 0.0}), max_replicas=64, max_num_seqs=8)
    assert decide(load(6.0, 10), off, PolicyState(), 100.0)[0].replicas == 8
    # Once the peak is older than burst_memory_s, the quiet load is the new peak and the fleet shrinks.
    later, state = decide(load(6.0, 10), cfg, state, 700.0)
    assert later.operator == "scale_down" and later.replicas == 8 and state.peak_load == 2
    # A share of the peak: the floor on the way down is half of it.
    half = PolicyConfig(spec=spec.model_copy(update={"burst_memory_share": 0.5}), max_replicas=64, max_num_seqs=8)
    a, kept = remember_peak(assess(load(6.0, 10), half), half, PolicyState(peak_load=10, peak_load_s=0.0), 100.0)
    assert a.down_replicas == 5 and kept.peak_load == 10
    # The state survives Serve's policy_state round trip.
    assert PolicyState.from_dict(state.to_dict()) == state
