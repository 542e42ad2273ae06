"""Load-test records, statistics and SLO parsing: pure, no network (the stream meter: test_common_openai_http.py)."""

import json

import numpy as np
import pytest

from corral.common.stats import percentile
from corral.loadtests.metrics import RequestRecord, describe
from corral.loadtests.slo import evaluate, parse_slo


def test_record_roundtrip():
    r = RequestRecord(7, ttft_s=0.1, itl_s=[0.01], error=None, arm="a")
    d = json.loads(r.to_json())
    assert d["ok"] is True
    assert RequestRecord.from_dict(d) == r


def test_describe_uses_the_one_percentile_which_matches_numpy():
    rng = np.random.default_rng(0)
    xs = list(rng.exponential(size=101))
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    d = describe(xs[:20], percentiles=(50, 95))
    assert d["p95"] == pytest.approx(float(np.percentile(xs[:20], 95)))
    assert d["p50"] == pytest.approx(float(np.percentile(xs[:20], 50)))
    assert percentile([], 50) is None and describe([])["p95"] is None
    assert describe([1.0, 2.0, 3.0])["mean"] == 2.0
    with pytest.raises(ValueError, match="p=101"):
        percentile(xs, 101)


def test_parse_slo_and_errors():
    clauses = parse_slo("ttft_p95=0.5, itl_p99=50ms")
    assert [(c.metric, c.quantile_pct, c.threshold_s) for c in clauses] == [("ttft", 95, 0.5), ("itl", 99, 0.05)]
    for bad, msg in [("ttft=0.5", "METRIC_pQ"), ("foo_p95=1", "METRIC_pQ"), ("ttft_p95", "no '='"),
                     ("ttft_p95=abc", "not a positive number"), ("ttft_p0=1", "outside"),
                     ("ttft_p95=1,ttft_p95=2", "twice"), ("", "empty")]:
        with pytest.raises(ValueError, match=msg):
            parse_slo(bad)


def test_attainment_counts_failures_as_misses():
    ok = [RequestRecord(i, ttft_s=0.1 * (i + 1), itl_s=[0.01, 0.02], e2e_s=1.0) for i in range(9)]
    failed = RequestRecord(9, error="HTTP 500")
    verdict = evaluate(parse_slo("ttft_p80=0.5,itl_p50=0.015"), ok + [failed])
    # TTFTs 0.1..0.9: 5 of 9 ok within 0.5, plus one failure -> 5/10.
    assert verdict["clauses"]["ttft_p80"]["attainment"] == pytest.approx(0.5)
    assert not verdict["clauses"]["ttft_p80"]["met"]
    # ITL gaps: 9 of 18 within 0.015, plus one failure sample -> 9/19.
    assert verdict["clauses"]["itl_p50"]["attainment"] == pytest.approx(9 / 19)
    assert verdict["met"] is False
    assert evaluate(parse_slo("ttft_p50=1"), ok)["met"] is True
