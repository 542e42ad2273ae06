"""The ingress with stand-in arms: the real outcome of every request, failover, timeouts, admission.

The arms are fake Serve handles whose generators behave like Ray Serve LLM's LLMServer (batched
SSE strings for streams, a response object otherwise, an ErrorResponse first chunk for errors)
and can fail: raise mid-stream, send vLLM's error event, never answer. Everything above them is
corral's real ingress code on Ray Serve LLM's real `OpenAiIngress`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter

import pytest
from fastapi import FastAPI, Request
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    OpenAIHTTPException,
)
from starlette.responses import JSONResponse, StreamingResponse
from starlette.testclient import TestClient

from corral.cluster import metric_names as names
from corral.cluster.spec import parse_fleet
from corral.cluster.spec.rollout import default_gates
from corral.serving.ingress import AdmissionGate, CorralIngress, LiveAdmission, _validation_error, scrub

ARMS = ("a", "b")


def chunk(arm: str, text: str) -> str:
    return "data: " + json.dumps({"id": f"chatcmpl-{arm}", "model": arm, "choices": [{"index": 0, "delta": {"content": text}}]}) + "\n\n"


USAGE = 'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'


class Arm:
    """A fake deployment handle for one arm; `mode` says how it behaves."""

    def __init__(self, name: str) -> None:
        self.name, self.mode, self.calls, self.healthy = name, "ok", 0, True
        self.cancelled = 0  # calls the ingress cancelled (Serve's DeploymentResponseGenerator.cancel)

    def options(self, **_):
        return self

    @property
    def chat(self):
        return self

    @property
    def check_health(self):
        arm = self

        class Probe:
            def remote(self):
                return ProbeResponse(arm.healthy)

        return Probe()

    def remote(self, body, raw_request_info=None):
        self.calls += 1
        return Call(self, self._run(body))

    async def _run(self, body):
        mode = self.mode
        if mode == "raise_before":
            raise RuntimeError("ray.exceptions.ActorDiedError: The actor died unexpectedly")
        if mode == "error_500":
            yield ErrorResponse(error=ErrorInfo(message="EngineCore died", code=500, type="InternalServerError"))
            return
        if mode == "hang":
            await asyncio.sleep(3600)
        if not body.stream:
            yield ChatCompletionResponse(
                id=f"chatcmpl-{self.name}", model=self.name,
                choices=[{"index": 0, "message": {"role": "assistant", "content": "hey"}, "finish_reason": "stop"}],
                usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
            return
        yield [chunk(self.name, "he")]
        if mode == "raise_mid_stream":
            raise RuntimeError("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue")
        if mode == "error_event":
            yield ['data: {"error": {"message": "EngineCore encountered an issue", "type": "InternalServerError", "param": null, "code": 500}}\n\n']
            yield ["data: [DONE]\n\n"]
            return
        yield [chunk(self.name, "y"), USAGE, "data: [DONE]\n\n"]


class Call:
    """What a streaming handle call returns, as Serve's DeploymentResponseGenerator: iterated, or
    cancelled (then the arm's work ends: the generator is closed)."""

    def __init__(self, arm: Arm, items) -> None:
        self.arm, self.items = arm, items

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.items.__anext__()

    def cancel(self) -> None:
        self.arm.cancelled += 1


class ProbeResponse:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def __await__(self):
        if not self.ok:
            yield from asyncio.sleep(3600).__await__()
        return None

    def cancel(self) -> None:
        pass


class Recorder:
    """Stands in for RequestMetrics (Ray's metrics need a running Ray): keeps every record."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str]] = []
        self.details: list[tuple] = []
        self.failed_over: Counter = Counter()
        self.up: dict[str, int] = {}
        outer = self

        class Inc:
            def inc(self, n, tags):
                outer.failed_over[(tags["route"], tags["arm"], tags["reason"])] += n

        class Gauge:
            def set(self, v, tags):
                outer.up[tags["arm"]] = v

        self.failovers, self.arm_up, self.feedback = Inc(), Gauge(), None

    def record(self, route, arm, code, *args):
        self.records.append((route, arm, str(code)))
        self.details.append(args)  # (latency_s, ttft_s, itl_s, usage)

    def flush(self) -> None:
        """RequestMetrics hands summed counters to Ray here; every record is already kept."""


def make_ingress(admission: dict | None = None, weights: dict | None = None):
    arms = {name: Arm(name) for name in ARMS}
    cards = {name: ModelCard(id=name, object="model", owned_by="t", permission=[], metadata={}) for name in ARMS}
    ingress = CorralIngress(arms, cards)
    rec = Recorder()
    ingress._metrics = rec
    ingress.reconfigure({"routes": {"llama": weights or {"a": 50, "b": 50}}, "admission": admission or {}})
    return ingress, arms, rec


def http_request(headers: dict | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": raw,
                    "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "scheme": "http"})


def chat_body(model="llama", user="u-1", stream=True, **extra) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=model, messages=extra.pop("messages", [{"role": "user", "content": "hi"}]),
                                 stream=stream, user=user, **extra)


def user_on(arm: str, weights=None) -> str:
    from corral.serving.split import pick_arm

    return next(f"u-{i}" for i in range(1000) if pick_arm(weights or {"a": 50, "b": 50}, f"u-{i}") == arm)


async def read(response) -> str:
    if isinstance(response, StreamingResponse):
        return "".join([part async for part in response.body_iterator])
    return response.body.decode()


def run(coro):
    return asyncio.run(coro)


# -- the real outcome of every request --------------------------------------------------------

def test_engine_dying_mid_stream_is_recorded_as_an_exception_and_told_to_the_client():
    ingress, arms, rec = make_ingress()
    arms["a"].mode = "raise_mid_stream"

    async def go():
        response = await ingress.chat(chat_body(user=user_on("a")), http_request())
        return response, await read(response)

    response, text = run(go())
    assert response.status_code == 200  # headers were sent before the engine died
    assert '"he"' in text and '"code": 503' in text and text.endswith("data: [DONE]\n\n")
    assert "vllm.v1" not in text
    assert rec.records == [("llama", "a", names.OUTCOME_EXCEPTION)]
    assert not ingress._health.is_up("a")


def test_error_event_in_the_stream_is_a_stream_error():
    ingress, arms, rec = make_ingress()
    arms["b"].mode = "error_event"

    async def go():
        return await read(await ingress.chat(chat_body(user=user_on("b")), http_request()))

    text = run(go())
    assert '"error"' in text
    assert rec.records == [("llama", "b", names.OUTCOME_STREAM_ERROR)]
    assert not ingress._health.is_up("b")  # code 500: the arm is failing


def test_client_disconnect_mid_stream_is_recorded_and_releases_the_slot():
    ingress, arms, rec = make_ingress()

    async def go():
        response = await ingress.chat(chat_body(user=user_on("a")), http_request())
        it = response.body_iterator
        await it.__anext__()
        assert ingress._in_flight.by_route == {"llama": 1}
        await it.aclose()  # what cancellation by a departed client does to the generator

    run(go())
    assert rec.records == [("llama", "a", names.OUTCOME_CLIENT_DISCONNECT)]
    assert ingress._in_flight.by_route == {}
    assert ingress._health.is_up("a")  # the client's doing, not the arm's


def test_a_full_stream_is_a_200_and_usage_is_stripped_unless_asked():
    ingress, arms, rec = make_ingress()

    async def go():
        response = await ingress.chat(chat_body(user=user_on("a")), http_request())
        return response, await read(response)

    response, text = run(go())
    assert rec.records == [("llama", "a", "200")]
    assert '"usage"' not in text and response.headers["x-corral-arm"] == "a"


class CompactArm(Arm):
    """Chunks in vLLM's compact JSON (model_dump_json), two tokens 10 ms apart."""

    async def _run(self, body):
        def compact(text):
            return "data: " + json.dumps({"id": f"chatcmpl-{self.name}", "model": self.name,
                                          "choices": [{"index": 0, "delta": {"content": text}}]},
                                         separators=(",", ":")) + "\n\n"
        yield [compact("he")]
        await asyncio.sleep(0.01)
        yield [compact("y"), USAGE]  # no [DONE]: the ingress adds it, as Ray Serve LLM's wrapper does


def test_a_stream_records_ttft_itl_usage_and_its_response_id():
    ingress, arms, rec = make_ingress()
    ingress._default_serve_handles["a"] = CompactArm("a")

    async def go():
        response = await ingress.chat(chat_body(user=user_on("a")), http_request())
        return await read(response)

    text = run(go())
    assert text.endswith("data: [DONE]\n\n") and text.count("[DONE]") == 1 and '"usage"' not in text
    assert rec.records == [("llama", "a", "200")]
    latency_s, ttft_s, itl_s, usage = rec.details[0]
    assert 0 <= ttft_s < latency_s and itl_s >= 0.009  # 2 tokens: (last - first) / 1
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert ingress._responses["chatcmpl-a"] == ("llama", "a")  # for /v1/feedback


def test_usage_is_read_from_the_usage_object_alone():
    from corral.serving.ingress import _split_usage

    tricky = "data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": 'say "usage":{"x":1}'}}]},
                                   separators=(",", ":")) + "\n\n"
    packet = tricky + USAGE + "data: [DONE]\n\n"
    text, usage = _split_usage(packet, keep=False, usage=None)
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert text == tricky + "data: [DONE]\n\n"  # the usage-only chunk dropped, the rest as it was
    assert _split_usage(packet, keep=True, usage=None)[0] == packet
    # usage in a chunk that also has a choice (continuous usage): read, and the chunk kept
    both = ('data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],'
            '"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n')
    assert _split_usage(both, keep=False, usage=None) == (both, {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    # a broken usage object: the line is passed on and the usage seen so far kept
    broken = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,\n\n'
    assert _split_usage(broken, keep=False, usage={"total_tokens": 9}) == (broken, {"total_tokens": 9})


class OneBatchArm(CompactArm):
    """A short answer whose every chunk, usage included, comes in the engine's first batch."""

    async def _run(self, body):
        chunk = "data: " + json.dumps({"id": f"chatcmpl-{self.name}", "model": self.name,
                                       "choices": [{"index": 0, "delta": {"content": "Paris"}}]},
                                      separators=(",", ":")) + "\n\n"
        yield [chunk, USAGE]


def test_a_stream_answered_in_one_batch_still_records_its_response_id():
    """Feedback on a one-batch answer (usage in the same packet as the first token) is accepted:
    the id was once skipped there, and the user's /v1/feedback got 404."""
    ingress, arms, rec = make_ingress()
    ingress._default_serve_handles["a"] = OneBatchArm("a")

    async def go():
        response = await ingress.chat(chat_body(user=user_on("a")), http_request())
        return await read(response)

    text = run(go())
    assert '"Paris"' in text and rec.records == [("llama", "a", "200")]
    assert ingress._responses["chatcmpl-a"] == ("llama", "a")


def test_a_non_streamed_answer_records_its_usage_and_response_id():
    ingress, arms, rec = make_ingress()

    async def go():
        return await ingress.chat(chat_body(user=user_on("b"), stream=False), http_request())

    response = run(go())
    assert json.loads(response.body)["choices"][0]["message"]["content"] == "hey"
    assert response.headers["x-corral-arm"] == "b" and response.headers["x-corral-route"] == "llama"
    assert rec.records == [("llama", "b", "200")] and rec.details[0][3]["total_tokens"] == 4
    assert ingress._responses["chatcmpl-b"] == ("llama", "b") and ingress._in_flight.by_route == {}


def test_a_non_streamed_answer_is_the_document_the_stock_ingress_sends():
    """corral writes the answer with pydantic in one step (model_dump_json); the stock ingress
    sends JSONResponse(content=first.model_dump()) (ray/llm/_internal/serve/core/ingress/ingress.py,
    `_process_llm_request`): equal documents once parsed, non-ASCII text, escapes and floats
    included. Not equal bytes: a float may be spelled differently (pydantic writes -0.00001
    where json.dumps writes -1e-05), and a NaN, which JSONResponse refuses (allow_nan=False: a 500), pydantic
    writes as null."""
    from ray.serve.llm.ingress import OpenAiIngress

    answer = ChatCompletionResponse(
        id="chatcmpl-u", model="a",
        choices=[{"index": 0, "message": {"role": "assistant", "content": 'héllo — 你好 "q"\n\t'},
                  "logprobs": {"content": [{"token": "h", "logprob": -0.1234567890123, "bytes": [104],
                                            "top_logprobs": [{"token": "x", "logprob": -1e-05}]}]},
                  "finish_reason": "stop"}],
        usage={"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10})

    class Fixed(Arm):
        async def _run(self, body):
            yield answer

    cards = {"a": ModelCard(id="a", object="model", owned_by="t", permission=[], metadata={})}
    stock = OpenAiIngress({"a": Fixed("a")}, cards)
    ingress, _, rec = make_ingress()
    ingress._default_serve_handles["a"] = Fixed("a")
    ingress.__dict__.pop("_corral_kept_handles", None)

    async def go():
        theirs = await stock.chat(chat_body(model="a", stream=False), http_request())
        ours = await ingress.chat(chat_body(model="a", stream=False), http_request())
        return theirs, ours

    theirs, ours = run(go())
    assert ours.status_code == theirs.status_code == 200
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"
    assert json.loads(ours.body) == json.loads(theirs.body) == answer.model_dump()
    assert "你好" in ours.body.decode("utf-8")  # UTF-8, not \u escapes, as JSONResponse writes it
    assert rec.details[0][3] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    assert ingress._responses["chatcmpl-u"] == ("a", "a")


def test_the_error_rate_gate_counts_every_server_side_outcome():
    """The rollout's default error query selects what the ingress records for failed requests
    (PromQL label regexes are fully anchored, like re.fullmatch)."""
    (gate,) = [g for g in default_gates() if g.name == "error_rate"]
    regex = re.search(r'status=~"([^"]+)"', gate.query).group(1)
    for failed in ("500", "503", names.OUTCOME_STREAM_ERROR, names.OUTCOME_EXCEPTION, names.OUTCOME_TIMEOUT):
        assert re.fullmatch(regex, failed), failed
    for fine in ("200", "400", "429", names.OUTCOME_CLIENT_DISCONNECT):
        assert not re.fullmatch(regex, fine), fine


# -- failover ---------------------------------------------------------------------------------

def test_an_arm_failing_before_answering_fails_over_and_its_users_return_after_a_probe():
    ingress, arms, rec = make_ingress({"failover": {"probe_interval_s": 0.01}})
    arms["a"].mode, arms["a"].healthy = "error_500", False
    ua, ub = user_on("a"), user_on("b")

    async def go():
        first = await ingress.chat(chat_body(user=ua, stream=False), http_request())
        assert first.status_code == 200 and first.headers["x-corral-arm"] == "b"  # retried on b
        # a is out: its users go straight to b, b's users stay on b; pinned a gets 503.
        again = await ingress.chat(chat_body(user=ua, stream=False), http_request())
        pinned = await ingress.chat(chat_body(model="a", stream=False), http_request())
        other = await ingress.chat(chat_body(user=ub, stream=False), http_request())
        # The engine comes back: the probe puts a back in, its user returns.
        arms["a"].mode, arms["a"].healthy = "ok", True
        for _ in range(3000):  # up to 30 s on a loaded machine; the probe runs every 10 ms
            if ingress._health.is_up("a"):
                break
            await asyncio.sleep(0.01)
        back = await ingress.chat(chat_body(user=ua, stream=False), http_request())
        return again, pinned, other, back

    again, pinned, other, back = run(go())
    assert again.headers["x-corral-arm"] == "b" and other.headers["x-corral-arm"] == "b"
    assert pinned.status_code == 503 and pinned.headers["Retry-After"] == "5"
    error = json.loads(pinned.body)["error"]
    assert error["type"] == "ServiceUnavailableError" and error["message"].startswith("arm 'a' is not available")
    assert back.headers["x-corral-arm"] == "a"
    assert arms["a"].calls == 2  # the failed call and the one after recovery; nothing while out
    assert rec.records[0] == ("llama", "a", "500")
    assert rec.failed_over[("llama", "a", "500")] == 1 and rec.failed_over[("llama", "a", "arm_down")] == 1
    assert rec.up == {"a": 1}


def test_no_healthy_arm_is_503_with_retry_after_never_500():
    ingress, arms, rec = make_ingress({"failover": {"retry_after_s": 7}})
    for arm in arms.values():
        arm.mode, arm.healthy = "raise_before", False

    async def go():
        return await ingress.chat(chat_body(user="u-x", stream=True), http_request())

    response = run(go())
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"
    assert "ActorDiedError" not in json.loads(response.body)["error"]["message"]
    assert [r[2] for r in rec.records] == [names.OUTCOME_EXCEPTION, names.OUTCOME_EXCEPTION, "503"]
    assert ingress._health.down() == {"a", "b"}


def test_an_arm_that_does_not_answer_times_out_within_the_bound():
    ingress, arms, rec = make_ingress({"failover": {"first_response_timeout_s": 0.2, "retry_on_other_arm": False}})
    arms["a"].mode = "hang"

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        response = await ingress.chat(chat_body(user=user_on("a")), http_request())
        return response, loop.time() - t0

    response, waited = run(go())
    assert response.status_code == 503 and 0.2 <= waited < 10  # the bound, not the hour the arm would take
    assert rec.records[0] == ("llama", "a", names.OUTCOME_TIMEOUT)
    # The call the ingress gave up on is cancelled (else it stays queued or runs on the engine for nobody).
    assert arms["a"].calls == arms["a"].cancelled == 1


def test_a_timed_out_attempt_is_cancelled_and_its_retry_answers():
    ingress, arms, rec = make_ingress({"failover": {"first_response_timeout_s": 0.2}})
    arms["a"].mode = "hang"
    response = run(ingress.chat(chat_body(user=user_on("a"), stream=False), http_request()))
    assert response.status_code == 200 and json.loads(response.body)["model"] == "b"
    assert (arms["a"].cancelled, arms["b"].calls, arms["b"].cancelled) == (1, 1, 0)  # only the abandoned one


def test_client_errors_do_not_count_against_the_arm():
    ingress, arms, rec = make_ingress()

    class Bad(Arm):
        async def _run(self, body):
            yield ErrorResponse(error=ErrorInfo(message="max_tokens too large", code=400, type="BadRequestError"))

    ingress._default_serve_handles["a"] = ingress._configured_serve_handles["a"] = Bad("a")

    async def go():
        with pytest.raises(OpenAIHTTPException) as info:
            await ingress.chat(chat_body(model="a"), http_request())
        return info.value

    assert run(go()).status_code == 400
    assert ingress._health.is_up("a") and rec.records == [("a", "a", "400")]


def test_a_client_error_raised_by_the_arm_goes_back_as_it_is():
    """Ray re-raises an arm's exception as a RayTaskError that is also an instance of its cause
    (ray/exceptions.py `RayTaskError.as_instanceof_cause`), so an OpenAIHTTPException the arm
    raises reaches the ingress as one."""
    ingress, arms, rec = make_ingress()

    class Raising(Arm):
        async def _run(self, body):
            raise OpenAIHTTPException(message="prompt is too long", status_code=400, type="BadRequestError")
            yield  # an async generator, like the arm's

    ingress._default_serve_handles["a"] = ingress._configured_serve_handles["a"] = Raising("a")

    async def go():
        with pytest.raises(OpenAIHTTPException) as info:
            await ingress.chat(chat_body(model="a"), http_request())
        return info.value

    error = run(go())
    assert (error.status_code, error.message) == (400, "prompt is too long")
    assert ingress._health.is_up("a") and rec.records == [("a", "a", "400")]


# -- admission --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    (dict(n=9), "n=9 is larger than the limit of 8"),
    (dict(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role 'wizard'"),
    (dict(messages=[{"role": "user", "content": "x"}] * 1025), "1025 messages are more than the limit of 1024"),
    (dict(messages=[]), "messages must not be empty"),
    (dict(max_tokens=100), "max_tokens=100 is larger than this model's cap of 50"),
    (dict(model=None), "model is required"),
])
def test_invalid_requests_are_400_in_openai_format(body, message):
    ingress, arms, rec = make_ingress({"route_defaults": {"max_tokens_cap": 50}})
    response = run(ingress.chat(chat_body(**body), http_request()))
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert message in error["message"] and error["code"] == 400 and error["type"] == "BadRequestError"
    assert arms["a"].calls + arms["b"].calls == 0


def test_max_tokens_default_applies_only_when_the_client_sets_none():
    ingress, arms, rec = make_ingress({"routes": {"llama": {"max_tokens_default": 32}}})
    seen = []
    original = Arm._run

    async def spy(self, body):
        seen.append((body.max_tokens, body.max_completion_tokens))
        async for item in original(self, body):
            yield item

    Arm._run = spy
    try:
        run(ingress.chat(chat_body(stream=False), http_request()))
        run(ingress.chat(chat_body(stream=False, max_completion_tokens=5), http_request()))
    finally:
        Arm._run = original
    assert seen == [(32, None), (None, 5)]


def test_concurrency_limits_per_key_and_route_are_429_with_retry_after():
    from corral.serving.auth import hash_key

    ingress, arms, rec = make_ingress({"max_concurrent_requests_per_key": 1, "route_defaults": {"max_concurrent_requests": 2},
                                       "concurrency_retry_after_s": 3})
    ingress.reconfigure({"routes": {"llama": {"a": 50, "b": 50}},
                         "auth": {"enabled": True, "keys": [{"name": "k1", "sha256": hash_key("sk-1")},
                                                            {"name": "k2", "sha256": hash_key("sk-2")},
                                                            {"name": "k3", "sha256": hash_key("sk-3")}]}})

    async def go():
        streams = [await ingress.chat(chat_body(), http_request({"Authorization": "Bearer sk-1"}))]
        same_key = await ingress.chat(chat_body(), http_request({"Authorization": "Bearer sk-1"}))
        streams.append(await ingress.chat(chat_body(), http_request({"Authorization": "Bearer sk-2"})))
        route_full = await ingress.chat(chat_body(), http_request({"Authorization": "Bearer sk-3"}))
        for s in streams:
            await read(s)
        after = await ingress.chat(chat_body(), http_request({"Authorization": "Bearer sk-1"}))
        await read(after)
        return same_key, route_full, after

    same_key, route_full, after = run(go())
    assert same_key.status_code == 429 and same_key.headers["Retry-After"] == "3"
    assert "'k1'" in json.loads(same_key.body)["error"]["message"]
    assert route_full.status_code == 429 and "'llama'" in json.loads(route_full.body)["error"]["message"]
    assert after.status_code == 200
    assert ingress._in_flight.by_key == {} and ingress._in_flight.by_route == {}


def gate_app(spec: dict | None = None) -> TestClient:
    from fastapi.exceptions import RequestValidationError

    from corral.cluster.spec import AdmissionSpec

    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.post("/v1/chat/completions")
    async def handler(body: ChatCompletionRequest):
        return JSONResponse({"error": {"message": "boom in ray.llm._internal.serve.core.configs.openai_api_models.ErrorResponse"}},
                            status_code=400) if body.model == "boom" else {"ok": body.model}

    app.add_middleware(AdmissionGate, live=LiveAdmission(AdmissionSpec.model_validate(spec or {})))
    return TestClient(app)


def test_the_gate_refuses_non_json_oversized_and_non_utf8_bodies():
    client = gate_app({"max_body_bytes": 2048})
    url = "/v1/chat/completions"
    ok = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post(url, json=ok).json() == {"ok": "m"}
    plain = client.post(url, content=json.dumps(ok), headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error"]["type"] == "UnsupportedMediaTypeError"
    big = client.post(url, json={**ok, "pad": "x" * 4000})
    assert big.status_code == 413 and "2048" in big.json()["error"]["message"]

    def chunked():
        for _ in range(5):
            yield b" " * 1000

    streamed = client.post(url, content=chunked(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    bad_utf8 = client.post(url, content=b'{"model": "\xff\xfe", "messages": []}', headers={"Content-Type": "application/json"})
    assert bad_utf8.status_code == 400 and "UTF-8" in bad_utf8.json()["error"]["message"]
    wrong_type = client.post(url, json={"model": "m", "messages": "hello"})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "messages"
    huge_headers = client.post(url, json=ok, headers={"X-Junk": "x" * 40_000})
    assert huge_headers.status_code == 431 and "32768" in huge_headers.json()["error"]["message"]
    scrubbed = client.post(url, json={**ok, "model": "boom"})
    assert scrubbed.json()["error"]["message"] == "boom in ErrorResponse"


def test_the_gate_passes_streams_through_and_scrubs_an_error_body_sent_in_parts():
    from corral.cluster.spec import AdmissionSpec

    async def app(scope, receive, send):
        await receive()
        if scope["path"] == "/v1/chat/completions":  # a stream: three chunks, each its own message
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            for part in (b"data: 1\n\n", b"data: ray.llm._internal.x.Kept\n\n", b"data: [DONE]\n\n"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = b'{"error": {"message": "failed in vllm.v1.engine.exceptions.EngineDeadError"}}'
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body[:20], "more_body": True})
        await send({"type": "http.response.body", "body": body[20:], "more_body": False})

    client = TestClient(AdmissionGate(app, live=LiveAdmission(AdmissionSpec())))
    streamed = client.post("/v1/chat/completions", json={"model": "m"})
    # A success is passed on as it is, internal-looking text included: only error bodies are rewritten.
    assert streamed.status_code == 200 and streamed.text == "data: 1\n\ndata: ray.llm._internal.x.Kept\n\ndata: [DONE]\n\n"
    failed = client.post("/v1/completions", json={"model": "m"})
    assert failed.status_code == 503 and failed.json() == {"error": {"message": "failed in EngineDeadError"}}
    assert int(failed.headers["content-length"]) == len(failed.content)


def test_scrub_keeps_only_the_class_name():
    assert scrub("Internal exception: ray.llm._internal.serve.core.x.Foo failed; vllm.v1.engine.EngineDeadError") == \
        "Internal exception: Foo failed; EngineDeadError"
    assert scrub("ray is fine. vllm 0.32 too") == "ray is fine. vllm 0.32 too"


def test_admission_spec_refuses_unknown_routes_and_default_above_cap():
    from corral.cluster.spec import SpecError

    base = {"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}}],
            "routes": [{"name": "llama", "arms": [{"arm": "a", "weight": 100}]}]}
    fleet = parse_fleet({**base, "admission": {"routes": {"llama": {"max_tokens_cap": 64}}}})
    assert fleet.admission.limits("llama").max_tokens_cap == 64 and fleet.admission.limits("a").max_tokens_cap is None
    with pytest.raises(SpecError, match="unknown route"):
        parse_fleet({**base, "admission": {"routes": {"nope": {}}}})
    with pytest.raises(SpecError, match="max_tokens_default"):
        parse_fleet({**base, "admission": {"route_defaults": {"max_tokens_default": 100, "max_tokens_cap": 10}}})
