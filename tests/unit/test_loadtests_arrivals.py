"""Arrival processes, trace replay, prompt synthesis and load-test config validation."""

import pytest

from corral.loadtests.arrivals import (
    DEFAULT_TRACE,
    TokenCalibration,
    constant_schedule,
    load_trace,
    poisson_schedule,
    request_body,
    sweep_rates,
    synthesize_prompt,
    trace_schedule,
)
from corral.loadtests.config import LoadConfig, stages

TRACE = DEFAULT_TRACE  # the trace shipped with corral


def test_constant_schedule_is_evenly_spaced():
    s = constant_schedule(4.0, 2.5, 10, 5)
    assert [a.at_s for a in s] == pytest.approx([i * 0.25 for i in range(10)])
    assert all(a.input_tokens == 10 and a.output_tokens == 5 for a in s)


def test_poisson_schedule_has_exactly_rate_times_window_arrivals_and_poisson_gaps():
    s = poisson_schedule(20.0, 200.0, 10, 5, seed=3, warmup_s=5.0)
    warm = [a.at_s for a in s if a.at_s < 5.0]
    measured = [a.at_s for a in s if a.at_s >= 5.0]
    # Conditioned on its counts: the measured window holds exactly 20 x 200 arrivals, the warm-up 20 x 5.
    assert len(warm) == 100 and len(measured) == 4000 and max(measured) < 205.0
    assert [a.at_s for a in s] == sorted(a.at_s for a in s)
    gaps = [b - a for a, b in zip(measured, measured[1:])]
    mean = sum(gaps) / len(gaps)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert mean == pytest.approx(0.05, rel=0.01)
    assert cv == pytest.approx(1.0, abs=0.05)  # exponential-like gaps, as bursty as a Poisson process
    from scipy import stats

    # Given their number, a Poisson process's arrival times are uniform on the window.
    assert stats.kstest([(t - 5.0) / 200.0 for t in measured], "uniform").pvalue > 0.01
    assert len(poisson_schedule(1.625, 75.0, 1, 1, seed=0, warmup_s=8.0)) == round(1.625 * 8) + round(1.625 * 75)
    with pytest.raises(ValueError, match="rate_rps"):
        poisson_schedule(0, 1, 1, 1)
    with pytest.raises(ValueError, match="warmup_s"):
        poisson_schedule(1, 1, 1, 1, warmup_s=-1)


def test_same_seed_same_arrivals_at_a_rate_wherever_it_sits_in_a_sweep():
    assert poisson_schedule(2.0, 30.0, 1, 1, seed=3) == poisson_schedule(2.0, 30.0, 1, 1, seed=3)
    assert poisson_schedule(2.0, 30.0, 1, 1, seed=3) != poisson_schedule(2.0, 30.0, 1, 1, seed=4)
    assert poisson_schedule(2, 30, 1, 1, seed=3) == poisson_schedule(2.0, 30.0, 1, 1, seed=3)  # 2 rps is 2.0 rps
    # Two configurations swept from different starts meet identical arrivals at the rates they share.
    a = stages(LoadConfig(mode="sweep", slo="ttft_p95=1", sweep_start_rps=1, sweep_step_rps=0.5, sweep_max_rps=3))
    b = stages(LoadConfig(mode="sweep", slo="ttft_p95=1", sweep_start_rps=2, sweep_step_rps=0.5, sweep_max_rps=3))
    by_rate = {p.rate_rps: p.schedule for p in a}
    assert [p.rate_rps for p in b] == [2, 2.5, 3]
    assert all(p.schedule == by_rate[p.rate_rps] for p in b)
    assert by_rate[2] != by_rate[2.5]  # other rates: other draws
    # A stage holds exactly rate x window arrivals in its measured window: its rate is the one it is named for.
    cfg = LoadConfig()
    for p in a:
        assert sum(1 for x in p.schedule if x.at_s >= cfg.warmup_s) == round(p.rate_rps * cfg.duration_s)


def test_azure_trace_replay_compression_and_clipping():
    rows = load_trace(TRACE)
    assert len(rows) == 19366
    assert rows[0].t_s == 0.0 and rows[0].context_tokens == 374 and rows[0].generated_tokens == 44
    assert rows[1].t_s == pytest.approx(4.314579, abs=1e-6)
    normal = trace_schedule(rows, start_s=0, duration_s=60)
    fast = trace_schedule(rows, start_s=0, duration_s=6, speedup=10)
    assert len(fast.arrivals) == len(normal.arrivals)
    assert [a.at_s * 10 for a in fast.arrivals] == pytest.approx([a.at_s for a in normal.arrivals])
    clipped = trace_schedule(rows, duration_s=600, max_total_tokens=512)
    assert clipped.clipped > 0
    assert all(a.input_tokens + a.output_tokens <= 512 for a in clipped.arrivals)
    assert len(trace_schedule(rows, max_requests=7).arrivals) == 7


def test_trace_rejects_bad_files(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,Tokens\n2023-11-16 18:15:46.68,3\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nnot-a-time,1,2\n")
    with pytest.raises(ValueError, match=":2: bad trace row"):
        load_trace(bad)


def test_sweep_rates():
    assert sweep_rates(0.5, 0.5, 2.0) == [0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError):
        sweep_rates(2, 1, 1)


def test_prompt_synthesis_and_calibration():
    p = synthesize_prompt(50, salt=1)
    assert len(p.split()) == 50
    assert synthesize_prompt(50, salt=2) != p and synthesize_prompt(50, salt=1) == p
    cal = TokenCalibration.fit([(16, 17), (128, 129)])  # e.g. a BOS token
    assert cal.overhead == pytest.approx(1) and cal.tokens_per_word == pytest.approx(1)
    assert cal.words_for(100) == 99
    with pytest.raises(ValueError, match="two different"):
        TokenCalibration.fit([(16, 17), (16, 17)])


def test_request_body_forces_output_length():
    b = request_body("llama", "hi there", 32)
    assert b["max_tokens"] == b["min_tokens"] == 32 and b["ignore_eos"] is True
    assert b["stream_options"] == {"include_usage": True} and b["prompt"] == "hi there"
    c = request_body("llama", "hi", 8, chat=True, force_output=False)
    assert "ignore_eos" not in c and c["messages"][0]["content"] == "hi"


@pytest.mark.parametrize("change, field", [
    ({"mode": "burst"}, "mode"), ({"rate_rps": 0}, "rate_rps"), ({"concurrency": 0}, "concurrency"),
    ({"base_url": "http://example.com"}, "base_url"), ({"mode": "sweep"}, "slo"),
    ({"slo": "ttft=1"}, "ttft=1"), ({"warmup_s": -1}, "warmup_s"),
    ({"mode": "trace", "trace_path": "/nonexistent.csv"}, "trace_path"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        LoadConfig(**change).validate()


def test_stages_for_each_mode():
    closed = stages(LoadConfig(mode="closed", concurrency=3))
    assert len(closed) == 1 and closed[0].concurrency == 3 and closed[0].schedule is None
    const = stages(LoadConfig(mode="constant", rate_rps=2, duration_s=10, warmup_s=5))
    assert len(const[0].schedule) == 30  # warm-up arrivals are scheduled too (and excluded later)
    capped = stages(LoadConfig(mode="poisson", rate_rps=50, duration_s=10, max_requests=20))
    assert len(capped[0].schedule) == 20
    sweep = stages(LoadConfig(mode="sweep", slo="ttft_p95=1", sweep_start_rps=1, sweep_step_rps=1, sweep_max_rps=3))
    assert [s.rate_rps for s in sweep] == [1, 2, 3]


def test_trace_thinning_and_token_scale_keep_the_timing():
    rows = load_trace(TRACE)
    full = trace_schedule(rows, duration_s=600)
    thin = trace_schedule(rows, duration_s=600, keep=0.25, token_scale=0.1, seed=1)
    assert len(thin.arrivals) == pytest.approx(len(full.arrivals) / 4, rel=0.1)
    # Every kept request is one of the trace's, at its recorded time, with a tenth of its tokens.
    by_time = {a.at_s: a for a in full.arrivals}
    for a in thin.arrivals:
        orig = by_time[a.at_s]
        assert a.input_tokens == max(1, round(orig.input_tokens * 0.1))
        assert a.output_tokens == max(1, round(orig.output_tokens * 0.1))
    assert trace_schedule(rows, duration_s=60, keep=0.5, seed=1) == trace_schedule(rows, duration_s=60, keep=0.5, seed=1)
    with pytest.raises(ValueError, match="keep"):
        trace_schedule(rows, keep=0)
    with pytest.raises(ValueError, match="trace_token_scale"):
        LoadConfig(trace_token_scale=2).validate()
