"""Sequential gates: the confidence sequence, its error rates on simulated streams, the state machine hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_rollout_state import B, C, World, make_spec, run_to_baking

from corral.cluster.spec.rollout import MetricGate
from corral.rollout.gates import MetricReadings, Verdict
from corral.rollout.machine import Phase
from corral.rollout.sequential import (
    MIN_N,
    ArmSample,
    bernoulli_sample,
    evaluate_sequential,
    half_width,
    log_histogram_sample,
    rho_squared,
)

ERR = MetricGate(name="errors", test="sequential", metric="error_rate", margin=0.03, alpha=0.05, design_n=500)
TTFT = MetricGate(name="ttft", test="sequential", metric="ttft", margin=1.2, alpha=0.05, design_n=500)
SAT = MetricGate(name="sat", test="sequential", metric="quality_pass_rate", margin=0.1, alpha=0.05)


def test_boundary_by_hand():
    # alpha=0.05, design_n=500: l2 = -2 ln 0.05 = 5.9915; rho^2 = (5.9915 + ln 6.9915) / 500 = 0.0158735
    r2 = rho_squared(0.05, 500)
    assert r2 == pytest.approx((5.991465 + 1.944695) / 500, rel=1e-5)
    # at t=500, sd=1: sqrt(2 (500 r2 + 1) / (500^2 r2) x ln(sqrt(500 r2 + 1) / 0.05))
    t = 500
    expected = math.sqrt(2 * (t * r2 + 1) / (t * t * r2) * math.log(math.sqrt(t * r2 + 1) / 0.05))
    assert half_width(ArmSample(500, 0.0, 1.0), 0.05, 500) == pytest.approx(expected)
    assert expected == pytest.approx(0.1357, abs=5e-4)  # wider than the fixed-n 1.96/sqrt(500) = 0.0877
    # it shrinks with n, roughly like sqrt(log n / n)
    assert half_width(ArmSample(5000, 0, 1), 0.05, 500) < half_width(ArmSample(500, 0, 1), 0.05, 500) / 2.5


def test_samples_from_counts_and_histograms():
    s = bernoulli_sample(0, 100)
    assert s.mean == 0 and s.var == pytest.approx((1 / 102) * (101 / 102))  # never a zero-width interval
    assert bernoulli_sample(3, 0) is None
    # 10 values in (0.1, 0.2], 10 in (0.2, 0.4]: logs at the geometric midpoints
    h = log_histogram_sample([(0.1, 0), (0.2, 10), (0.4, 20), (float("inf"), 20)])
    lo, hi = math.log(math.sqrt(0.1 * 0.2)), math.log(math.sqrt(0.2 * 0.4))
    assert h.n == 20 and h.mean == pytest.approx((lo + hi) / 2)
    assert h.var == pytest.approx(20 * ((hi - lo) / 2) ** 2 / 19)
    assert log_histogram_sample([(0.1, 0), (float("inf"), 0)]) is None


def _error_streams(p_c, p_b, seeds, n_max, rng):
    c = rng.random((seeds, n_max)) < p_c
    b = rng.random((seeds, n_max)) < p_b
    return np.cumsum(c, axis=1), np.cumsum(b, axis=1)


def _ever(verdicts_by_seed, verdict):
    return sum(verdict in v for v in verdicts_by_seed) / len(verdicts_by_seed)


def _run_error_gate(gate, p_c, p_b, seeds=300, n_max=3000, every=50, seed=0):
    rng = np.random.default_rng(seed)
    cc, cb = _error_streams(p_c, p_b, seeds, n_max, rng)
    out, first = [], []
    for i in range(seeds):
        vs, stop = [], None
        for n in range(every, n_max + 1, every):
            v = evaluate_sequential(gate, bernoulli_sample(cc[i, n - 1], n), bernoulli_sample(cb[i, n - 1], n)).verdict
            vs.append(v)
            if v != Verdict.INCONCLUSIVE and stop is None:
                stop = n
        out.append(vs)
        first.append(stop)
    return out, first


def test_error_rate_type_one_error_at_the_margin_stays_below_alpha():
    # Candidate exactly `margin` worse: the gate must (almost) never pass it, looked at 60 times per run.
    runs, _ = _run_error_gate(ERR, p_c=0.05 + ERR.margin, p_b=0.05)
    assert _ever(runs, Verdict.PASS) <= ERR.alpha
    # Candidate as good as the baseline: it must (almost) never fail it.
    runs, first = _run_error_gate(ERR, p_c=0.05, p_b=0.05, seed=1)
    assert _ever(runs, Verdict.FAIL) <= ERR.alpha
    # ... and it passes it: equal arms are declared not worse within 3000 requests per arm in
    # most runs (75% of these 300 seeds; the rest stay inconclusive, never a wrong verdict).
    assert _ever(runs, Verdict.PASS) >= 0.7


def test_error_rate_power_when_clearly_worse():
    runs, first = _run_error_gate(ERR, p_c=0.25, p_b=0.05, seeds=200, n_max=1000, seed=2)
    assert _ever(runs, Verdict.FAIL) == 1.0 and _ever(runs, Verdict.PASS) == 0.0
    assert np.median([f for f in first if f is not None]) <= 200


# The ingress's TTFT buckets (cluster/metric_names.py: log_buckets(0.005, 120), 20 per decade, 3 digits);
# written out here because importing the ingress loads Ray Serve.
TTFT_BUCKETS_S = sorted({float(f"{0.005 * 10 ** (k / 20):.3g}") for k in range(0, 88)})  # 0.005 .. 112 s


def _histogram(values):
    edges = np.array(TTFT_BUCKETS_S)
    counts = np.searchsorted(edges, values, side="left")  # bucket index per value (le semantics)
    cum = np.cumsum(np.bincount(counts, minlength=len(edges) + 1))
    return [(float(le), float(c)) for le, c in zip(edges, cum[:-1])] + [(float("inf"), float(cum[-1]))]


def _run_ttft_gate(ratio, seeds=150, n_max=2000, every=100, seed=0):
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(seeds):
        base = rng.lognormal(math.log(0.5), 0.5, n_max)
        cand = rng.lognormal(math.log(0.5 * ratio), 0.5, n_max)
        runs.append([evaluate_sequential(TTFT, log_histogram_sample(_histogram(cand[:n])),
                                         log_histogram_sample(_histogram(base[:n]))).verdict
                     for n in range(every, n_max + 1, every)])
    return runs


def test_latency_ratio_from_histograms_type_one_error_and_power():
    assert _ever(_run_ttft_gate(ratio=TTFT.margin), Verdict.PASS) <= TTFT.alpha
    assert _ever(_run_ttft_gate(ratio=1.0, seed=1), Verdict.FAIL) <= TTFT.alpha
    clearly_worse = _run_ttft_gate(ratio=2.0, seeds=50, n_max=500, seed=2)
    assert _ever(clearly_worse, Verdict.FAIL) == 1.0 and _ever(clearly_worse, Verdict.PASS) == 0.0


def test_insufficient_evidence_never_promotes():
    r = evaluate_sequential(ERR, bernoulli_sample(0, MIN_N - 1), bernoulli_sample(0, 1000))
    assert r.verdict == Verdict.INCONCLUSIVE and "need 10" in r.message
    assert evaluate_sequential(ERR, None, bernoulli_sample(0, 1000)).verdict == Verdict.INCONCLUSIVE
    # 30 requests each and no errors: the interval is still wider than the 3-point margin
    r = evaluate_sequential(ERR, bernoulli_sample(0, 30), bernoulli_sample(0, 30))
    assert r.verdict == Verdict.INCONCLUSIVE and r.low < ERR.margin < r.high


def test_result_carries_estimate_interval_and_direction():
    r = evaluate_sequential(SAT, bernoulli_sample(200, 1000), bernoulli_sample(800, 1000))
    # satisfaction: lower is worse, so the difference is baseline - candidate = +0.6
    assert r.verdict == Verdict.FAIL and r.value == pytest.approx(0.6) and r.low > 0.1
    assert r.test == "sequential" and r.alpha == 0.05 and r.margin == 0.1
    d = r.to_dict()
    assert d["low"] == r.low and d["high"] == r.high and "95% confidence sequence" in d["message"]
    r = evaluate_sequential(TTFT, ArmSample(1000, math.log(0.5), 0.25), ArmSample(1000, math.log(0.5), 0.25))
    assert r.verdict == Verdict.PASS and r.value == pytest.approx(1.0) and r.low < 1 < r.high < 1.2


def test_spec_validation():
    with pytest.raises(ValueError, match="needs metric"):
        MetricGate(name="x", test="sequential", margin=0.1)
    with pytest.raises(ValueError, match="must be > 1"):
        MetricGate(name="x", test="sequential", metric="latency", margin=0.5)
    with pytest.raises(ValueError, match="must be < 1"):
        MetricGate(name="x", test="sequential", metric="error_rate", margin=2)
    with pytest.raises(ValueError, match="belong to threshold"):
        MetricGate(name="x", test="sequential", metric="error_rate", margin=0.1, query="$requests")
    with pytest.raises(ValueError, match="belong to `test: sequential`"):
        MetricGate(name="x", query="$ttft", max=2, floor=0.1, margin=0.1)


def _seq_readings(cand_errors, n=200):
    return MetricReadings(values={}, requests={B: n, C: n},
                          samples={"errors": {B: bernoulli_sample(0, n).to_list(),
                                              C: bernoulli_sample(cand_errors, n).to_list()}})


def test_state_machine_rolls_back_on_a_sequential_failure_and_promotes_on_a_pass():
    spec = make_spec(gates=[ERR], failure_limit=0)
    w = World(spec)
    run_to_baking(w)
    w.tick(10, metrics=_seq_readings(cand_errors=80))
    assert w.state.phase == Phase.ROLLED_BACK and "error_rate candidate - baseline" in w.state.reason
    assert w.state.last_gates[0]["test"] == "sequential" and w.state.last_gates[0]["low"] > ERR.margin

    w = World(make_spec(gates=[ERR]))
    run_to_baking(w)
    for _ in range(3):
        w.tick(10, metrics=_seq_readings(cand_errors=0, n=2000))
    assert w.state.step >= 1 and w.state.phase == Phase.PROGRESSING
    assert w.state.baseline_samples["errors"][0] == 2000



def test_the_largest_baseline_sample_stands_in_when_the_baseline_gets_little_or_no_traffic():
    w = World(make_spec(gates=[ERR]))
    run_to_baking(w)
    for _ in range(3):  # step 1 (50%): 2000 requests each, no errors -> pass, baseline sample kept
        w.tick(10, metrics=_seq_readings(cand_errors=0, n=2000))
    assert w.state.baseline_samples["errors"][0] == 2000
    while w.state.stage.value != "baking":
        w.tick(1)
    # step 2: the baseline has only 12 requests this step; with them alone 2000 candidate requests
    # could not pass the 3-point margin, with the kept 2000 they do
    small = MetricReadings(values={}, requests={B: 50, C: 2000},
                           samples={"errors": {B: bernoulli_sample(0, 12).to_list(),
                                               C: bernoulli_sample(0, 2000).to_list()}})
    assert evaluate_sequential(ERR, bernoulli_sample(0, 2000), bernoulli_sample(0, 12)).verdict == Verdict.INCONCLUSIVE
    w.tick(10, metrics=small)
    assert w.state.last_gates[0]["verdict"] == "pass", w.state.last_gates
    assert w.state.baseline_samples["errors"][0] == 2000  # a smaller sample never replaces a larger one
