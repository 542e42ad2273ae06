"""`corral ab report --prometheus` against a fake Prometheus HTTP API holding known traffic."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from promfake import BUCKETS, FakePrometheus, Feedback, Req

from corral.cluster.spec.loader import load_fleet
from corral.commands._common import CliError
from corral.rollout.ab_prometheus import collect, histogram_quantile, report
from corral.rollout.promstats import sample
from corral.serving.prometheus import PrometheusClient

T0, T1 = 1_000_000.0, 1_000_600.0
B, C = "llama2-stand-in", "smollm2"
FLEET = "cluster/fleets/migration.yaml"


def traffic(seed=0):
    rng = np.random.default_rng(seed)
    reqs, fb = [], []
    for arm, n, errors, ttft_med, good_share in ((B, 400, 4, 0.2, 0.8), (C, 400, 40, 0.4, 0.4)):
        ts = np.sort(rng.uniform(T0 + 1, T1, n))
        for i, t in enumerate(ts):
            err = i < errors
            ttft = float(rng.lognormal(math.log(ttft_med), 0.4))
            reqs.append(Req(float(t), "llama", arm, status=500 if err else 200, ttft=ttft,
                            itl=float(rng.lognormal(math.log(0.05), 0.2)), latency=ttft + 1.5,
                            output_tokens=0 if err else 30, input_tokens=20))
        for i, t in enumerate(np.sort(rng.uniform(T0 + 1, T1, 100))):
            fb.append(Feedback(float(t), "llama", arm, 1.0 if i < 100 * good_share else 0.25))
    # traffic outside the window and on another route must not count
    reqs += [Req(T0 - 5, "llama", B), Req(T1 + 5, "llama", C), Req(T0 + 10, "other", B)]
    return reqs, fb


@pytest.fixture
def prom():
    reqs, fb = traffic()
    p = FakePrometheus(reqs, fb, replicas={f"LLMServer:{B}": 1, f"LLMServer:{C}": 2}, now=T1)
    yield p, reqs
    p.close()


def by_metric(rows):
    return {r.metric: r for r in rows}


def test_report_from_prometheus_series(prom):
    p, reqs = prom
    data = collect(PrometheusClient(p.url), "llama", [B, C], T0, T1,
                   {B: f"LLMServer:{B}", C: f"LLMServer:{C}"}, step_s=10)
    rows = by_metric(report(data, B, C, T1 - T0, gpu_hourly_usd=2.0, gpus_per_replica={B: 1, C: 1}))
    assert rows["requests"].estimates[B].value == 400 and rows["requests"].estimates[C].value == 400
    err = rows["error_rate"]
    assert err.estimates[B].value == pytest.approx(0.01) and err.estimates[C].value == pytest.approx(0.1)
    assert err.estimates[C].low < 0.1 < err.estimates[C].high and err.comparison.significant
    # quantiles: the sample's own p95 lies in the bucket the report names, and the estimate is in it too
    for arm in (B, C):
        ttft = sorted(r.ttft for r in reqs if r.arm == arm and r.route == "llama" and T0 < r.t <= T1)
        true_p95 = float(np.quantile(ttft, 0.95))
        e = rows["ttft_p95_s"].estimates[arm]
        edges = [0.0] + BUCKETS["ray_corral_ttft_seconds"]
        k = next(i for i, le in enumerate(edges) if le >= e.value)
        assert edges[k - 1] <= true_p95 <= edges[k] * 1.13  # within its bucket (or the next, 12% on)
        assert e.low < e.value < e.high
        assert f"{arm} in (" in rows["ttft_p95_s"].note
    # the candidate's TTFT is twice the baseline's: the geometric-mean ratio says so, significantly
    assert "candidate/baseline 2" in rows["ttft_geomean_s"].note or "candidate/baseline 1.9" in rows["ttft_geomean_s"].note
    assert rows["ttft_geomean_s"].comparison.significant
    assert not rows["itl_geomean_s"].comparison.significant or rows["itl_geomean_s"].comparison.p_value > 0.001
    # tokens: 396 and 360 successful requests x 30 tokens over 600 s
    assert rows["output_tokens_per_s"].estimates[B].value == pytest.approx(396 * 30 / 600)
    assert rows["output_tokens_per_s"].estimates[C].value == pytest.approx(360 * 30 / 600)
    # satisfaction: 80% vs 40% of ratings above 0.5
    sat = rows["satisfaction_pass_rate"]
    assert sat.estimates[B].value == pytest.approx(0.8) and sat.estimates[C].value == pytest.approx(0.4)
    assert sat.comparison.significant
    # cost: $2/GPU-h x 1 GPU x replica-seconds (1 and 2 replicas for 600 s) / tokens
    assert rows["replica_seconds"].estimates[B].value == pytest.approx(600)
    assert rows["replica_seconds"].estimates[C].value == pytest.approx(1200)
    cost = rows["cost_per_1m_output_tokens_usd"].estimates
    assert cost[B].value == pytest.approx(2.0 * 600 / 3600 / (396 * 30) * 1e6)
    assert cost[C].value == pytest.approx(2.0 * 1200 / 3600 / (360 * 30) * 1e6)
    # every query was an instant query at --until or a range query over the window
    assert all("[600s]" in q or "deployment=" in q for q in p.queries)


def test_histogram_quantile_matches_prometheus_interpolation():
    # Prometheus bucketQuantile: rank 0.5 x 100 = 50 falls in (1, 2] holding ranks 40..80 -> 1 + 10/40
    bs = [(1.0, 40.0), (2.0, 80.0), (4.0, 100.0), (math.inf, 100.0)]
    e, bucket = histogram_quantile(bs, 0.5)
    assert e.value == pytest.approx(1.25) and bucket == (1.0, 2.0)
    # ranks 50 +/- 1.96 x 5 = [40.2, 59.8] -> [1 + 0.2/40, 1 + 19.8/40]
    assert e.low == pytest.approx(1.005, rel=1e-5) and e.high == pytest.approx(1.495, rel=1e-5)
    # a rank in the +Inf bucket answers the last finite edge
    e, bucket = histogram_quantile([(1.0, 10.0), (math.inf, 20.0)], 0.99)
    assert e.value == 1.0 and math.isinf(bucket[1])


def test_sequential_samples_from_the_same_series(prom):
    p, _ = prom
    client = PrometheusClient(p.url)
    s = sample(client, "error_rate", "llama", C, T1 - T0, T1)
    assert s.n == 400 and s.mean == pytest.approx(0.1)
    s = sample(client, "quality_pass_rate", "llama", B, T1 - T0, T1)
    assert s.n == 100 and s.mean == pytest.approx(0.8)
    s = sample(client, "ttft", "llama", C, T1 - T0, T1)
    assert s.n == 400 and math.exp(s.mean) == pytest.approx(0.4, rel=0.1)


def _cli(argv):
    from corral.commands import ab

    parser = argparse.ArgumentParser()
    ab.register(parser.add_subparsers())
    args = parser.parse_args(["ab", "report", *argv])
    return args.func(args)


def test_cli_json_and_html(prom, tmp_path, capsys):
    p, _ = prom
    html = tmp_path / "ab.html"
    argv = [FLEET, "--prometheus", p.url, "--since", str(T0), "--until", str(T1), "--gpu-price", "2",
            "--step-s", "10", "--rollout-store", str(tmp_path / "none.json")]
    with pytest.raises(CliError, match="does not exist") as err:
        _cli(argv)
    assert err.value.code == 2
    argv = argv[:-2]
    assert _cli(argv + ["--json", "--html", str(html), "--api-input-usd-per-1m", "0.1",
                        "--api-output-usd-per-1m", "0.4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["route"] == "llama" and doc["baseline"] == B and doc["candidate"] == C
    rows = {r["metric"]: r for r in doc["rows"]}
    assert rows["error_rate"]["test"]["significant"] is True
    assert {o["option"] for o in doc["cost"]["options"]} == {"cloud", "api"}
    text = html.read_text()
    assert text.count("data:image/png;base64,") == 4 and "ttft_p95_s" in text
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "error_rate" in out and "cost_per_1m_output_tokens_usd" in out


def test_cli_bad_input_and_unreachable_prometheus(prom):
    p, _ = prom
    with pytest.raises(CliError, match="--since") as err:
        _cli([FLEET, "--prometheus", p.url, "--since", "yesterday-ish"])
    assert err.value.code == 2
    with pytest.raises(CliError, match="before") as err:
        _cli([FLEET, "--prometheus", p.url, "--since", str(T1), "--until", str(T0)])
    assert err.value.code == 2
    with pytest.raises(CliError, match="not an arm") as err:
        _cli([FLEET, "--prometheus", p.url, "--baseline", "nope"])
    with pytest.raises(CliError, match="unreachable") as err:
        _cli([FLEET, "--prometheus", "http://127.0.0.1:9", "--since", str(T0), "--until", str(T1)])
    assert err.value.code == 3


def test_migration_fleets_validate():
    good, bad = load_fleet(FLEET), load_fleet("cluster/fleets/migration-bad.yaml")
    assert [s.weight for s in good.rollout.steps] == [50, 70, 90, 100]
    assert good.rollout.candidate == "smollm2" and bad.rollout.candidate == "llama2-random"
    assert good.arms[0].model.demo == "tiny-llama2-random" and bad.arms[1].model.demo == "tiny-llama2-random"
    assert {g.test for g in good.rollout.gates} == {"sequential", "threshold"} and good.rollout.quality.enabled


def test_metric_source_collects_sequential_samples_over_the_step(prom):
    from corral.cluster.spec.rollout import MetricGate, QualityGate, RolloutSpec
    from corral.rollout.metrics import PrometheusMetricSource
    from corral.rollout.sequential import evaluate_sequential_readings

    p, _ = prom
    gates = [MetricGate(name="err", test="sequential", metric="error_rate", margin=0.02),
             MetricGate(name="ttft", test="sequential", metric="ttft", margin=1.3)]
    spec = RolloutSpec(route="llama", baseline=B, candidate=C, gates=gates, quality=QualityGate(enabled=False))
    client = PrometheusClient(p.url)  # the source asks for "now", which the fake takes as T1
    m = PrometheusMetricSource(client).collect(spec, window_s=60, elapsed_s=T1 - T0)
    assert m.values == {} and m.requests == {B: 400, C: 400}
    assert m.samples["err"][C][0] == 400 and m.samples["err"][C][1] == pytest.approx(0.1)
    # 10% vs 1% errors with a 2-point margin: worse, with 95% confidence; TTFT twice as slow: worse
    assert evaluate_sequential_readings(gates[0], m.samples["err"][C], m.samples["err"][B]).verdict.value == "fail"
    r = evaluate_sequential_readings(gates[1], m.samples["ttft"][C], m.samples["ttft"][B])
    assert r.verdict.value == "fail" and 1.7 < r.value < 2.3


def test_parse_time_forms():
    from corral.commands.ab import parse_time

    now = 1_700_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("30m", now) == now - 1800 and parse_time("-90s", now) == now - 90
    assert parse_time("1699990000", now) == 1_699_990_000
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20", now) == 1_700_000_000  # UTC unless it says otherwise
    with pytest.raises(ValueError, match="age like 30m"):
        parse_time("last tuesday", now)
