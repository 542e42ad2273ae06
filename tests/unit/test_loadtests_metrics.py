"""Client metric computation (StreamMeter), statistics and SLO parsing: pure, no network."""

import json

import numpy as np
import pytest

from corral.common.stats import percentile
from corral.loadtests.metrics import RequestRecord, StreamMeter, describe
from corral.loadtests.slo import evaluate, parse_slo


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj) if not isinstance(obj, str) else obj}\n\n".encode()


def completion_chunk(text, model="arm-a"):
    return {"object": "text_completion", "model": model, "choices": [{"index": 0, "text": text}]}


USAGE = {"object": "text_completion", "model": "arm-a", "choices": [],
         "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}


def test_known_timestamps_give_exact_ttft_itl_tpot_e2e():
    meter = StreamMeter(RequestRecord(1), sent_at=10.0)
    meter.feed(sse(completion_chunk(" a")), 10.25)
    meter.feed(sse(completion_chunk(" b")), 10.35)
    # Two events in one read share one arrival time (gap 0), as a client sees it.
    meter.feed(sse(completion_chunk(" c")) + sse(completion_chunk(" d")), 10.55)
    meter.feed(sse(USAGE) + sse("[DONE]"), 10.56)
    r = meter.finish(10.6)
    assert r.ok, r.error
    assert r.ttft_s == pytest.approx(0.25)
    assert r.itl_s == pytest.approx([0.10, 0.20, 0.0])
    assert r.e2e_s == pytest.approx(0.6)
    assert (r.input_tokens, r.output_tokens) == (12, 4)
    assert r.tpot_s == pytest.approx((0.6 - 0.25) / 3)
    assert r.content_events == 4
    assert r.arm == "arm-a"


def test_lines_split_across_reads_and_chat_deltas():
    chat = {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    role_only = {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    raw = sse(role_only) + sse(chat) + sse(chat) + sse({**USAGE, "model": "m"}) + sse("[DONE]")
    meter = StreamMeter(RequestRecord(2), sent_at=0.0)
    t = 0.0
    for i in range(0, len(raw), 7):  # 7-byte reads split every line
        t += 0.001
        meter.feed(raw[i:i + 7], t)
    r = meter.finish(t)
    assert r.ok and r.content_events == 2
    assert r.ttft_s > 0.001  # the role-only event is not a token


@pytest.mark.parametrize("chunks, error", [
    ([sse(completion_chunk(" a")), sse(USAGE)], "without [DONE]"),
    ([sse(completion_chunk(" a")), sse("[DONE]")], "no usage"),
    ([sse(USAGE), sse("[DONE]")], "no generated text"),
    ([sse({"error": {"message": "boom"}}), sse("[DONE]")], "server error"),
])
def test_incomplete_streams_are_failures(chunks, error):
    meter = StreamMeter(RequestRecord(3), sent_at=0.0)
    for i, c in enumerate(chunks):
        meter.feed(c, 0.1 * (i + 1))
    r = meter.finish(1.0)
    assert not r.ok and error in r.error


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
