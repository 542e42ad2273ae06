"""The ingress's per-request metrics: kept in the process and handed to Ray's metric objects
together (counter increments summed per series) once per flush interval; the latency histogram
takes answered requests only."""

from __future__ import annotations

import asyncio

import pytest
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard

from corral.serving import ingress as ingress_module
from corral.serving.ingress import CorralIngress, RequestMetrics

USAGE = {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}


def recorded(metrics: RequestMetrics) -> dict[str, list]:
    """Replace the Ray record functions (Ray's metrics export needs a running Ray) by lists."""
    calls: dict[str, list] = {name: [] for name in ("requests", "latency", "ttft", "itl", "input", "output")}
    for name, attr in (("requests", "_count_request"), ("latency", "_observe_latency"), ("ttft", "_observe_ttft"),
                       ("itl", "_observe_itl"), ("input", "_count_input"), ("output", "_count_output")):
        setattr(metrics, attr, lambda value, tags, _calls=calls[name]: _calls.append((value, dict(tags))))
    return calls


def test_recordings_are_handed_over_together_after_the_interval(monkeypatch):
    monkeypatch.setattr(ingress_module, "METRICS_FLUSH_INTERVAL_S", 0.05)
    metrics = RequestMetrics()
    calls = recorded(metrics)

    async def go():
        for _ in range(3):
            metrics.record("llama", "a", 200, 0.1, 0.02, 0.01, USAGE)
        metrics.record("llama", "b", 503, 0.2, None, None, None)
        metrics.record("llama", "b", 429, 0.0, None, None, None)
        # Nothing yet: a scrape between the two would see observations without their requests.
        assert all(v == [] for v in calls.values())
        await asyncio.sleep(0.2)
        first = {k: list(v) for k, v in calls.items()}
        metrics.record("llama", "a", 200, 0.1, None, None, USAGE)  # after a flush: a new timer
        await asyncio.sleep(0.2)
        return first

    first = asyncio.run(go())
    a200 = {"route": "llama", "arm": "a", "status": "200"}
    b503 = {"route": "llama", "arm": "b", "status": "503"}
    b429 = {"route": "llama", "arm": "b", "status": "429"}
    assert sorted(first["requests"], key=str) == sorted([(3, a200), (1, b503), (1, b429)], key=str)
    # Latency of the answers only: a refusal or a failure is not a fast answer.
    assert first["latency"] == [(0.1, {"route": "llama", "arm": "a"})] * 3
    assert len(first["ttft"]) == 3 and len(first["itl"]) == 3
    assert first["input"] == [(24, {"route": "llama", "arm": "a"})]
    assert first["output"] == [(15, {"route": "llama", "arm": "a"})]
    assert calls["requests"][3:] == [(1, a200)] and calls["output"][1:] == [(5, {"route": "llama", "arm": "a"})]
    assert metrics._pending == {}


def test_outside_an_event_loop_recordings_go_at_once():
    metrics = RequestMetrics()
    calls = recorded(metrics)
    metrics.record("llama", "a", "timeout", 2.0, None, None, None)
    assert calls["requests"] == [(1, {"route": "llama", "arm": "a", "status": "timeout"})]
    assert calls["input"] == calls["output"] == calls["latency"] == []
    metrics.record("llama", "a", 200, 2.0, None, None, None)
    assert calls["latency"] == [(2.0, {"route": "llama", "arm": "a"})]


def test_the_ingress_hands_over_what_it_summed_when_serve_shuts_it_down():
    cards = {"a": ModelCard(id="a", object="model", owned_by="t", permission=[], metadata={})}
    ingress = CorralIngress({"a": object()}, cards)
    calls = recorded(ingress._metrics)

    async def go():
        ingress._metrics.record("a", "a", 200, 0.1, None, None, USAGE)
        assert calls["requests"] == []
        ingress.__del__()  # what Serve's replica.call_destructor calls on a graceful shutdown
        assert calls["requests"] == [(1, {"route": "a", "arm": "a", "status": "200"})]
        assert ingress._metrics._flush_at is None

    asyncio.run(go())


def test_series_tags_must_be_strings():
    metrics = RequestMetrics()
    recorded(metrics)
    with pytest.raises(TypeError):
        metrics.record("r", 3, 200, 0.1, None, None, None)  # type: ignore[arg-type]
