"""How the ingress times requests: from their arrival, into histograms fine enough to read back."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from corral.serving.ingress import (
    ITL_BUCKETS_S,
    LATENCY_BUCKETS_S,
    TTFT_BUCKETS_S,
    AdmissionGate,
    _arrival,
    log_buckets,
)


def test_arrival_is_stamped_before_the_handler_runs():
    app = FastAPI()
    app.add_middleware(AdmissionGate)

    @app.post("/v1/chat/completions")
    async def handler(request: Request):
        await request.json()
        return {"waited_s": time.perf_counter() - _arrival(request)}

    before = time.perf_counter()
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 200
    assert 0 <= r.json()["waited_s"] < time.perf_counter() - before


def test_without_the_middleware_the_clock_starts_at_the_handler():
    class Fake:
        scope: dict = {}

    t0 = time.perf_counter()
    assert _arrival(Fake()) >= t0


def test_histogram_buckets_are_fine_enough_for_slo_reads():
    for buckets, widest in ((TTFT_BUCKETS_S, 1.13), (ITL_BUCKETS_S, 1.13), (LATENCY_BUCKETS_S, 1.27)):
        ratios = [b / a for a, b in zip(buckets, buckets[1:])]
        assert min(ratios) > 1 and max(ratios) < widest
    # Ray exports each observation at its bucket's midpoint: a 0.62 s TTFT reads back within 6%.
    i = next(i for i, b in enumerate(TTFT_BUCKETS_S) if b >= 0.62)
    assert (TTFT_BUCKETS_S[i - 1] + TTFT_BUCKETS_S[i]) / 2 == pytest.approx(0.62, rel=0.06)
    assert 10.0 in LATENCY_BUCKETS_S  # the rollout goodput gate reads le="10"
    assert TTFT_BUCKETS_S[0] == 0.005 and TTFT_BUCKETS_S[-1] <= 120
    with pytest.raises(ValueError, match="low_s"):
        log_buckets(1, 0.5)
