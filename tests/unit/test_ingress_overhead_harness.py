"""The ingress-overhead benchmark's `app` view: each ingress as it is deployed, called as Serve's
replica calls it. Its verdict means something only if the requests really go through each
ingress's whole app (middleware included) and both answer the same stand-in."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ingress_overhead as bench  # noqa: E402


def _chat(model: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                       "user": "u-1"}).encode()


def test_the_app_view_sends_requests_through_each_ingress_as_deployed(monkeypatch):
    monkeypatch.setattr(serve, "get_replica_context", bench._replica_context)

    async def go():
        got = {}
        for kind in ("stock", "corral"):
            replica, model = await bench.build_replica(kind, tokens=3)
            bench._serving(replica)
            got[kind] = {
                "stream": await bench.call_app(replica, _chat(model, True)),
                "plain": await bench.call_app(replica, _chat(model, False)),
                "text/plain": await bench.call_app(replica, _chat(model, False), content_type=b"text/plain"),
                "unknown model": await bench.call_app(replica, _chat("nope", False)),
                "not utf-8": await bench.call_app(replica, _chat(model, False).replace(b"hi", b"h\xff")),
            }
        return got

    got = asyncio.run(go())
    for kind, answers in got.items():
        status, body = answers["stream"]
        events = [line for line in body.decode().split("\n\n") if line]
        assert status == 200 and events[-1] == "data: [DONE]", kind
        assert sum('"content":"tok"' in e for e in events) == 3, kind  # the stand-in's three tokens
        # The client did not ask for usage: neither sends it (corral asks the engine, then strips it).
        assert not any('"usage"' in e for e in events), kind
        status, body = answers["plain"]
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3, kind
        # Through the app, not the handler alone: an unknown model is the endpoint's own 404.
        assert answers["unknown model"][0] == 404, kind
    # corral's AdmissionGate is in the path (it refuses a non-JSON body before parsing); the
    # stock app has no such gate and gets to body validation.
    assert got["corral"]["text/plain"][0] == 415
    assert got["stock"]["text/plain"][0] != 415
    # A body the gate refuses, answered through Ray Serve LLM's middleware in the OpenAI error
    # format (not a 500 or FastAPI's {"detail": ...}).
    status, body = got["corral"]["not utf-8"]
    assert status == 400 and "not valid UTF-8" in json.loads(body)["error"]["message"]
    # corral's route answered the stand-in arm through its ingress.
    assert json.loads(got["corral"]["plain"][1])["model"] == "arm"


def test_a_level_pairs_the_two_ingresses_and_restores_serve():
    real = serve.get_replica_context
    out = asyncio.run(bench.level(concurrency=2, stream=True, rounds=2, requests=4, tokens=2, view="app"))
    assert serve.get_replica_context is real
    assert out["view"] == "app" and out["p50_latency_ratio_corral_vs_stock"]["pairs"] == 2
    assert out["stock_p50_latency_s"] > 0


def test_the_stand_in_sends_the_usage_chunk_only_when_asked():
    """As vLLM does (stream_options.include_usage); else the stock ingress would pass one more
    event per stream to its client than corral, which strips the usage it asked for."""
    from corral.serving._ray_compat import ChatCompletionRequest

    arm = bench.StandInArm(tokens=2)

    async def events(**extra):
        body = ChatCompletionRequest(model="arm", messages=[{"role": "user", "content": "hi"}], stream=True, **extra)
        return [packet async for (packet,) in arm.remote(body)]

    plain = asyncio.run(events())
    asked = asyncio.run(events(stream_options={"include_usage": True}))
    assert plain[-1] == asked[-1] == "data: [DONE]\n\n"
    assert len(asked) == len(plain) + 1 and '"usage"' in asked[-2] and not any('"usage"' in p for p in plain)


def test_a_nan_in_an_answer_fails_the_stock_ingress_and_is_null_in_corrals(monkeypatch):
    """The README's one difference in the non-streamed document: JSONResponse refuses a NaN
    (allow_nan=False), so the stock ingress answers 500; pydantic's model_dump_json writes null."""
    from corral.serving._ray_compat import ChatCompletionResponse

    monkeypatch.setattr(serve, "get_replica_context", bench._replica_context)
    answer = ChatCompletionResponse(
        id="chatcmpl-nan", model="arm",
        choices=[{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop",
                  "logprobs": {"content": [{"token": "a", "logprob": float("nan"), "bytes": [97], "top_logprobs": []}]}}],
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})

    async def go():
        got = {}
        for kind in ("stock", "corral"):
            replica, model = await bench.build_replica(kind, tokens=1)
            for arm in replica._default_serve_handles.values():
                arm.full = answer
            bench._serving(replica)
            got[kind] = await bench.call_app(replica, _chat(model, False))
        return got

    got = asyncio.run(go())
    assert got["stock"][0] == 500
    status, body = got["corral"]
    assert status == 200 and json.loads(body)["choices"][0]["logprobs"]["content"][0]["logprob"] is None
