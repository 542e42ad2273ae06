"""corral's OpenAI ingress: Ray Serve LLM's `OpenAiIngress`, extended with routes.

A request names a *route* (e.g. `llama`), and the ingress picks one of the route's arms by
weight (sticky per user, see `split.py`) before handing the request to that arm's LLMServer
deployment, exactly as the stock ingress would. No extra hop: this class *is* the ingress.

Route weights arrive through Serve's `user_config` (`reconfigure`), so changing them is a
lightweight in-place update: no replica restarts, no dropped requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import time
import typing
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from ray.serve.llm.ingress import OpenAiIngress
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral.cluster import metric_names as names
from corral.cluster.metric_names import ITL_BUCKETS_S, LATENCY_BUCKETS_S, TTFT_BUCKETS_S, log_buckets  # noqa: F401
from corral.cluster.spec.admission import AdmissionSpec
from corral.serving import _ray_compat
from corral.serving._ray_compat import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIHTTPException,
)
from corral.serving.auth import Denied, InFlight, KeyRing
from corral.serving.health import ArmHealth
from corral.serving.shadow import Shadow, with_usage
from corral.serving.shadow import parse_config as parse_shadow
from corral.serving.split import failover_weights, pick_arm

logger = logging.getLogger("ray.serve")

# Ray Serve LLM's names on the per-request path, resolved once.
_ERROR_RESPONSE = _ray_compat.ErrorResponse
_NON_STREAMING_TYPES = _ray_compat.NON_STREAMING_RESPONSE_TYPES
_ROUTER_TIMEOUT_S = float(_ray_compat.ROUTER_HTTP_TIMEOUT_S)
_sse = _ray_compat.apply_openai_json_format

ARM_HEADER = "x-corral-arm"
ROUTE_HEADER = "x-corral-route"
SESSION_HEADER = "x-session-id"
_SESSION_HEADER_KEY = SESSION_HEADER.encode("latin-1")


# How long the ingress keeps what it recorded before handing it to Ray (s). Ray's own export
# runs every few seconds, so a second more delays no series that Prometheus scrapes noticeably.
METRICS_FLUSH_INTERVAL_S = 1.0


@dataclasses.dataclass(slots=True)
class _Pending:
    """One series' recordings not yet handed to Ray."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    ttfts_s: list[float] = dataclasses.field(default_factory=list)
    itls_s: list[float] = dataclasses.field(default_factory=list)


class RequestMetrics:
    """Per-route, per-arm series recorded with ray.util.metrics (exported by Ray's metrics agent)."""

    def __init__(self) -> None:
        from ray.util import metrics

        tags = ("route", "arm")
        self.requests = metrics.Counter(names.REQUESTS.removesuffix("_total"), "Requests by route, arm and HTTP status.", tag_keys=tags + ("status",))
        self.latency = metrics.Histogram(names.LATENCY, "End-to-end request latency (s).",
                                         boundaries=LATENCY_BUCKETS_S, tag_keys=tags)
        self.ttft = metrics.Histogram(names.TTFT, "Time to first token (s).", boundaries=TTFT_BUCKETS_S, tag_keys=tags)
        self.itl = metrics.Histogram(names.ITL, "Mean inter-token latency per request (s).",
                                     boundaries=ITL_BUCKETS_S, tag_keys=tags)
        self.input_tokens = metrics.Counter(names.INPUT_TOKENS.removesuffix("_total"), "Prompt tokens.", tag_keys=tags)
        self.output_tokens = metrics.Counter(names.OUTPUT_TOKENS.removesuffix("_total"), "Completion tokens.", tag_keys=tags)
        self.feedback = metrics.Histogram(names.FEEDBACK, "User ratings in [0, 1].", boundaries=[0.25, 0.5, 0.75, 1.0], tag_keys=tags)
        self.failovers = metrics.Counter(names.FAILOVERS.removesuffix("_total"),
                                         "Requests sent away from their arm because it was down or failed.",
                                         tag_keys=tags + ("reason",))
        self.arm_up = metrics.Gauge(names.ARM_UP, "1 while the ingress routes to the arm, 0 while it is out.",
                                    tag_keys=("arm",))
        self._series: dict[tuple[str, str, int | str], tuple[dict[str, str], dict[str, str]]] = {}
        recorder = _ray_compat.metric_recorder
        self._count_request, self._observe_latency = recorder(self.requests), recorder(self.latency)
        self._observe_ttft, self._observe_itl = recorder(self.ttft), recorder(self.itl)
        self._count_input, self._count_output = recorder(self.input_tokens), recorder(self.output_tokens)
        # What was recorded and not yet handed to Ray, by series.
        self._pending: dict[tuple[str, str, int | str], _Pending] = {}
        self._flush_at: asyncio.TimerHandle | None = None

    def record(self, route: str, arm: str, code: int | str, latency_s: float, ttft_s: float | None,
               itl_s: float | None, usage: dict | None) -> None:
        """One attempt's outcome; `code` is the HTTP status or one of names.OUTCOME_*. The latency
        histogram takes answered requests only (`names.answered`).

        On every request's path, so: tag dicts built and checked once per series (routes x arms x
        outcomes, a few dozen); the request counted and its observations kept in this process and
        all handed to Ray together at most `METRICS_FLUSH_INTERVAL_S` later (one counter call per
        series then, instead of three per request). Together, so that a scrape never sees an
        observation in a histogram before its request in the counter: goodput (histogram bucket /
        requests) stays a share even over a window of a few requests."""
        key = (route, arm, code)
        pending = self._pending.get(key)
        if pending is None:
            if key not in self._series:
                self._series[key] = self._new_series(route, arm, code)
            pending = self._pending[key] = _Pending()
        pending.requests += 1
        if names.answered(code):
            pending.latencies_s.append(latency_s)
        if ttft_s is not None:
            pending.ttfts_s.append(ttft_s)
        if itl_s is not None:
            pending.itls_s.append(itl_s)
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if prompt and prompt > 0:
                pending.prompt_tokens += prompt
            if completion and completion > 0:
                pending.completion_tokens += completion
        if self._flush_at is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # A Serve replica runs one event loop for its life; the timer runs on it.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop: nothing would run a timer, so hand over now
            self.flush()
            return
        self._flush_at = loop.call_later(METRICS_FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Hand what was recorded to Ray (also on the replica's shutdown: CorralIngress.__del__)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        pending, self._pending = self._pending, {}
        for key, p in pending.items():
            status_tags, tags = self._series[key]
            for value in p.latencies_s:
                self._observe_latency(value, tags=tags)
            for value in p.ttfts_s:
                self._observe_ttft(value, tags=tags)
            for value in p.itls_s:
                self._observe_itl(value, tags=tags)
            self._count_request(p.requests, tags=status_tags)
            if p.prompt_tokens:
                self._count_input(p.prompt_tokens, tags=tags)
            if p.completion_tokens:
                self._count_output(p.completion_tokens, tags=tags)

    def _new_series(self, route: str, arm: str, code: int | str) -> tuple[dict[str, str], dict[str, str]]:
        # Every tag key of the metrics (see __init__), with str values: what each public call checks.
        status_tags, tags = {"route": route, "arm": arm, "status": str(code)}, {"route": route, "arm": arm}
        if not all(isinstance(v, str) for v in status_tags.values()):
            raise TypeError(f"metric tag values must be str: {status_tags}")
        return status_tags, tags


ARRIVAL_KEY = "corral_arrival_s"


class LiveAdmission:
    """The admission limits in effect in this process. A Serve replica runs one ingress; its
    `reconfigure` sets `spec`, and the ASGI middleware (built before the replica existed)
    reads it on every request."""

    def __init__(self, spec: AdmissionSpec | None = None) -> None:
        self.spec = spec or AdmissionSpec()


LIVE_ADMISSION = LiveAdmission()

# Internal module paths in error text (`ray.llm._internal.serve...ErrorResponse`) -> the last name.
_INTERNAL_PATH = re.compile(r"\b(?:ray|vllm|starlette|fastapi|pydantic|pydantic_core)(?:\.[A-Za-z_]\w*)+\.([A-Za-z_]\w*)")


def scrub(text: str) -> str:
    """Error text without internal module paths."""
    return _INTERNAL_PATH.sub(r"\1", text)


class AdmissionGate:
    """Pure ASGI middleware, the outermost one. It stamps when a request reached the ingress (so
    the ingress's TTFT and latency include body parsing and validation, as a client sees them),
    and refuses what must be refused before the body is parsed: headers larger than
    `max_header_bytes` (431), a POST body that is not JSON (415), larger than `max_body_bytes`
    (413) or not UTF-8 (400). It also removes internal module paths from every JSON error body
    the app sends.

    On every request's path, so it reads the headers in one pass and hands a body that arrives in
    one message (what Serve's proxy sends for a request that fits its buffer) on as it came."""

    def __init__(self, app, live: LiveAdmission | None = None) -> None:
        self.app = app
        self.live = live or LIVE_ADMISSION

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[ARRIVAL_KEY] = time.perf_counter()
        spec = self.live.spec
        send = _scrubbing(send)
        header_bytes, media, declared = 0, b"", b""
        for name, value in scope.get("headers", ()):
            header_bytes += len(name) + len(value)
            name = name.lower()  # ASGI servers send them lower-cased; a hand-made scope may not
            if name == b"content-type":
                media = value
            elif name == b"content-length":
                declared = value
        if header_bytes > spec.max_header_bytes:
            await _send_error(send, 431, f"request headers of {header_bytes} bytes are larger than the limit of "
                                         f"{spec.max_header_bytes} bytes")
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = spec.max_body_bytes
        media_type = media.decode("latin-1").split(";")[0].strip().lower()
        multipart_ok = media_type == "multipart/form-data" and scope["path"].endswith("/transcriptions")
        if media_type and media_type != "application/json" and not media_type.endswith("+json") and not multipart_ok:
            await _send_error(send, 415, f"unsupported Content-Type {media_type!r}: send 'application/json'")
            return
        if declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, f"request body of {declared.decode()} bytes is larger than the limit of "
                                         f"{limit} bytes")
            return
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if message.get("more_body"):
            chunks, size = [body], len(body)
            while size <= limit:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
        if len(body) > limit:
            await _send_error(send, 413, f"request body is larger than the limit of {limit} bytes")
            return
        if not multipart_ok:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await _send_error(send, 400, f"request body is not valid UTF-8 (byte {exc.start})")
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _scrubbing(send: Any) -> Any:
    """Wrap an ASGI `send`: JSON error bodies (status >= 400) go out without internal paths.

    Every other message is handed to `send` as it is, and the caller awaits `send`'s own
    awaitable: no coroutine of ours per message (a stream sends one per chunk)."""
    held: dict[str, Any] | None = None  # an error response's start, held until its body is complete
    parts: list[bytes] = []

    def wrapped(message: dict[str, Any]) -> Any:
        nonlocal held
        if held is None:
            if (message["type"] == "http.response.start" and message["status"] >= 400
                    and dict(message.get("headers") or []).get(b"content-type", b"").startswith(b"application/json")):
                held = message
                return _nothing()
            return send(message)
        if message["type"] != "http.response.body":
            return send(message)
        parts.append(message.get("body", b""))
        if message.get("more_body"):
            return _nothing()
        start, held = held, None
        body = b"".join(parts)
        parts.clear()
        return _send_scrubbed(send, start, body)

    return wrapped


async def _nothing() -> None:
    return None


async def _send_scrubbed(send, start: dict[str, Any], body: bytes) -> None:
    body = scrub(body.decode("utf-8", "replace")).encode()
    start["headers"] = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
    start["headers"].append((b"content-length", str(len(body)).encode()))
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                404: "NotFoundError", 413: "RequestTooLargeError", 415: "UnsupportedMediaTypeError",
                431: "RequestHeaderFieldsTooLargeError",
                429: "RateLimitError", 503: "ServiceUnavailableError"}


def _error_body(code: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(code, "Error"), "param": param, "code": code}}


async def _send_error(send, code: int, message: str) -> None:
    body = json.dumps(_error_body(code, message)).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that does not fit the OpenAI schema: the first problem and where it is."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = f"invalid request: {first.get('msg', 'malformed body')}" + (f" at {where}" if where else "")
    return JSONResponse(_error_body(400, scrub(message), where), status_code=400)


def ingress_app():
    """Ray Serve LLM's FastAPI app (its middleware and error handlers) plus AdmissionGate, and a
    validation-error handler whose answer is always JSON-serializable."""
    app = _ray_compat.ingress_fastapi_app()
    # Ray Serve LLM's handler echoes the offending input as `param`: bytes for a non-JSON body,
    # which it then fails to serialize (500). Ours names the field instead.
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(AdmissionGate)  # added last = runs first
    return app


def _arrival(request: Request) -> float:
    return (request.scope.get("state") or {}).get(ARRIVAL_KEY) or time.perf_counter()


_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")

# Roles an OpenAI chat message may have (vLLM also accepts any string, served as a raw role).
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ArmFailed(Exception):
    """An arm failed a request before sending any of its answer."""

    def __init__(self, outcome: int | str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class _Slot:
    """One admitted request's place in the concurrency counts; released exactly once."""

    def __init__(self, in_flight: InFlight, key: str | None, route: str) -> None:
        self._in_flight, self._key, self._route, self._held = in_flight, key, route, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._in_flight.release(self._key, self._route)

    # A stream dropped before it started never runs its `finally`; the slot goes with it.
    __del__ = release


@_ray_compat.cancellable_arm_calls
class CorralIngress(OpenAiIngress):
    """OpenAI ingress with weighted, sticky routes over arms, admission control and failover."""

    def __init__(self, llm_deployments, model_cards, *, lora_paths=None, admission: dict | None = None, **kwargs):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kwargs)
        self._routes: dict[str, dict[str, int]] = {}
        self._keys = KeyRing()
        self._responses: dict[str, tuple[str, str]] = {}  # response id -> (route, arm), for feedback
        self._metrics = RequestMetrics()
        self._live = LIVE_ADMISSION
        self._live.spec = AdmissionSpec.model_validate(admission or {})
        self._health = ArmHealth(self._live.spec.failover.failures_to_eject)
        self._in_flight = InFlight()
        self._probes: dict[str, asyncio.Task] = {}
        self._shadow = Shadow(lambda body, method: _ray_compat.process_llm_request(self, body, method))

    @property
    def _admission(self) -> AdmissionSpec:
        return self._live.spec

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new route weights, keys and limits in place (Serve calls this on a user_config change)."""
        routes = {name: {arm: int(w) for arm, w in weights.items()} for name, weights in user_config.get("routes", {}).items()}
        unknown = {arm for weights in routes.values() for arm in weights if arm not in self._model_cards}
        if unknown:
            # Refuse the whole update rather than serve a half-applied split.
            raise ValueError(f"routes name unknown arms {sorted(unknown)}; arms are {sorted(self._model_cards)}")
        admission = self._admission
        if "admission" in user_config:  # absent: keep the fleet's (from the deployment's args)
            admission = AdmissionSpec.model_validate(user_config["admission"])
        shadow = parse_shadow(user_config.get("shadow"), self._model_cards)
        self._routes = routes
        self._shadow.routes = shadow
        self._keys = KeyRing.from_config(user_config.get("auth"), previous=self._keys)
        self._live.spec = admission
        self._health.failures_to_eject = admission.failover.failures_to_eject

    def _authorize(self, request: Request, scope: str = "inference") -> tuple[str | None, Response | None]:
        """(key hash, None) or (None, an OpenAI-format error response)."""
        bearer = _api_key(request)
        if bearer is None and scope == "inference" and not self._keys.required:
            return None, None  # what identify and check answer for it, without the clock
        digest, denied = self._keys.identify(bearer)
        denied = denied or self._keys.check(digest, time.monotonic(), scope)
        return digest, (_error(denied) if denied else None)

    # -- routing ---------------------------------------------------------------------------

    def _resolve(self, body: ChatCompletionRequest | CompletionRequest, request: Request) -> tuple[str, str | None, str | None]:
        """(route, preferred arm, arm to use) for a request; pins when `model` names an arm.

        The preferred arm is the user's sticky arm under the route's weights; the arm to use is
        the preferred one while it is up, else the user's arm among the route's healthy arms
        (None when none is up).
        """
        model = body.model
        if model in self._model_cards:
            return model, model, (model if self._health.is_up(model) else None)
        weights = self._routes.get(model)
        if weights is None:
            raise OpenAIHTTPException(
                message=f"The model {model!r} does not exist. Available: {sorted(self._routes) + sorted(self._model_cards)}",
                status_code=status.HTTP_404_NOT_FOUND,
                type="NotFoundError",
            )
        key = _sticky_key(body, request)
        preferred = pick_arm(weights, key)
        if self._health.is_up(preferred):
            return model, preferred, preferred
        healthy = failover_weights(weights, self._health.down())
        return model, preferred, (pick_arm(healthy, key) if healthy else None)

    # FastAPI reads this signature: `Request | None` would make `request` a query parameter, not the request.
    async def models(self, request: Request = None) -> ModelList | Response:  # type: ignore[assignment]
        # Ray Serve LLM also calls models() internally, without a request.
        if request is not None:
            _, denied = self._authorize(request)
            if denied is not None:
                return denied
        listing = await super().models()
        routes = [
            ModelCard(id=name, object="model", owned_by="corral", permission=[],
                      metadata={"route": True, "weights": weights})
            for name, weights in self._routes.items()
        ]
        return ModelList(data=routes + list(listing.data))

    async def model_data(self, model: str) -> ModelCard:
        if model in self._routes:
            return ModelCard(id=model, object="model", owned_by="corral", permission=[],
                             metadata={"route": True, "weights": self._routes[model]})
        return await super().model_data(model)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._routed(body, request, "completions")

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._routed(body, request, "chat")

    def _check_body(self, body, limits) -> str | None:
        """Why a request is refused (400), or None. Applies the route's max_tokens default."""
        spec = self._admission
        if (body.n or 1) > spec.max_n:
            return f"n={body.n} is larger than the limit of {spec.max_n}"
        messages = getattr(body, "messages", None)
        if messages is not None:
            if not messages:
                return "messages must not be empty"
            if len(messages) > spec.max_messages:
                return f"{len(messages)} messages are more than the limit of {spec.max_messages}"
            for i, message in enumerate(messages):
                role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
                if role not in CHAT_ROLES:
                    return f"messages[{i}].role {role!r} is not one of {sorted(CHAT_ROLES)}"
        # Field values straight from the model's __dict__: the attribute of a deprecated field
        # (vLLM's `max_tokens`) issues a DeprecationWarning on every read.
        values = body.__dict__
        body_cls: Any = type(body)
        fields = _token_fields(body_cls)
        asked = [values[f] for f in fields if values[f] is not None]
        if limits.max_tokens_cap is not None:
            for f in fields:
                value = values[f]
                if value is not None and value > limits.max_tokens_cap:
                    return f"{f}={value} is larger than this model's cap of {limits.max_tokens_cap}"
        if not asked and limits.max_tokens_default is not None:
            body.max_tokens = limits.max_tokens_default
        return None

    async def _routed(self, body, request: Request, call_method: str) -> Response:
        key, denied = self._authorize(request)
        if denied is not None:
            return denied
        if not body.model:
            return _error(Denied(400, "model is required: a route or an arm, see GET /v1/models"))
        route, preferred, arm = self._resolve(body, request)
        spec = self._admission
        limits = spec.limits(route)
        refused = self._check_body(body, limits)
        if refused:
            return _error(Denied(400, refused))
        key_name = self._keys.keys.get(key, {}).get("name") if key else None
        busy = self._in_flight.admit(key, spec.max_concurrent_requests_per_key, route, limits.max_concurrent_requests,
                                     spec.concurrency_retry_after_s, key_name)
        if busy is not None:
            self._metrics.record(route, preferred or route, busy.status, 0.0, None, None, None)
            return _error(busy)
        slot = _Slot(self._in_flight, key, route)
        if arm is not None and route != preferred:  # a routed (not pinned) request: maybe copy it
            self._shadow.copy(route, arm, body, call_method, _sticky_key(body, request))
        try:
            response = await self._attempts(body, request, call_method, route, preferred, arm, key, slot)
        except BaseException:
            slot.release()
            raise
        if not isinstance(response, StreamingResponse):
            slot.release()
        return response

    async def _attempts(self, body, request: Request, call_method: str, route: str, preferred: str | None,
                        arm: str | None, key: str | None, slot: _Slot) -> Response:
        """Send the request to `arm`; if the arm fails before answering, once more to another
        healthy arm of the route (not for pinned requests); 503 when no arm can take it."""
        failover = self._admission.failover
        pinned = route == preferred
        client_wants_usage = bool(getattr(body, "stream_options", None) and body.stream_options.include_usage)
        if body.stream:
            # Usage in the last chunk gives exact token counts for metrics; it is stripped again
            # below if the client did not ask for it.
            body.stream_options = with_usage(body)
        start = _arrival(request)
        tried: set[str] = set()
        if arm is not None and arm != preferred:
            self._metrics.failovers.inc(1, {"route": route, "arm": preferred, "reason": "arm_down"})
        while arm is not None:
            tried.add(arm)
            body.model = arm
            try:
                return await self._attempt(body, request, call_method, route, arm, start, client_wants_usage, key, slot)
            except ArmFailed as failed:
                self._metrics.record(route, arm, failed.outcome, time.perf_counter() - start, None, None, None)
                self._arm_failed(arm, str(failed.outcome), str(failed))
                if pinned or not failover.retry_on_other_arm:
                    break
                healthy = failover_weights(self._routes.get(route, {}), self._health.down() | tried)
                next_arm = pick_arm(healthy, _sticky_key(body, request)) if healthy else None
                if next_arm is not None:
                    self._metrics.failovers.inc(1, {"route": route, "arm": arm, "reason": str(failed.outcome)})
                arm = next_arm if len(tried) < 2 else None
        what = f"arm {preferred!r} is not" if pinned else f"no arm of route {route!r} is"
        self._metrics.record(route, preferred or route, 503, time.perf_counter() - start, None, None, None)
        return _error(Denied(503, f"{what} available right now; retry later", failover.retry_after_s))

    async def _attempt(self, body, request: Request, call_method: str, route: str, arm: str, start: float,
                       client_wants_usage: bool, key: str | None, slot: _Slot) -> Response:
        """One try of a request on `arm`: what Ray Serve LLM's `OpenAiIngress._process_llm_request`
        does (ray/llm/_internal/serve/core/ingress/ingress.py), with corral's accounting on the way.

        As there: read the arm's first item within the bound (its `router_request_timeout`, 408);
        an ErrorResponse first is an OpenAIHTTPException; a response object is answered as JSON
        (`JSONResponse(content=first.model_dump())`); anything else is streamed as SSE text
        (`_openai_json_wrapper`: `_apply_openai_json_format` per item, `data: [DONE]` added if the
        arm did not send it). Corral reads usage from the response object rather than its JSON,
        and streams through one generator instead of the stock path's two plus its own.
        """
        timeout_s = self._admission.failover.first_response_timeout_s
        calls = _ray_compat.ArmCalls()
        try:
            # One timer for both bounds (asyncio.timeout: no extra task per request, unlike wait_for).
            async with asyncio.timeout(min(timeout_s, _ROUTER_TIMEOUT_S)):
                with calls:
                    items = _ray_compat.llm_responses(self, body, call_method, request)
                    first = await items.__anext__()
        except asyncio.TimeoutError:
            # Nobody will read this attempt's answer: out of the router's queue or the engine.
            calls.cancel()
            if _ROUTER_TIMEOUT_S < timeout_s:  # the stock bound ends the wait: its 408
                self._metrics.record(route, arm, 408, time.perf_counter() - start, None, None, None)
                raise OpenAIHTTPException(message="Request server side timeout", status_code=408,
                                          type="Unknown") from None  # as router_request_timeout
            raise ArmFailed(names.OUTCOME_TIMEOUT, f"no response within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            calls.cancel()
            self._metrics.record(route, arm, names.OUTCOME_CLIENT_DISCONNECT, time.perf_counter() - start, None, None, None)
            raise
        except OpenAIHTTPException as exc:  # raised by the arm (a RayTaskError is also an instance of its cause)
            self._http_error(route, arm, start, exc.status_code, exc.message, exc.type)
        except Exception as exc:  # the replica or its engine died, the handle failed, ...
            raise ArmFailed(names.OUTCOME_EXCEPTION, f"{type(exc).__name__}: {scrub(str(exc))[:300]}") from None
        head = first[0] if isinstance(first, list) else first  # a stream's first item may be a batch
        if isinstance(head, _ERROR_RESPONSE):
            self._http_error(route, arm, start, head.error.code, head.error.message, head.error.type)
        if not isinstance(head, _NON_STREAMING_TYPES):
            # The stream releases the slot when it ends; if it is dropped unstarted, the slot's
            # finalizer does.
            stream = self._measured_stream(first, items, route, arm, start, client_wants_usage, key, slot)
            response: Response = StreamingResponse(stream, media_type="text/event-stream")
            response.raw_headers += _arm_headers(route, arm)
            return response
        # The arm's generator has nothing after its answer: close it now rather than leave it to
        # the event loop's async-generator finalizer (a task per request).
        await items.aclose()
        # The JSON the stock ingress sends (`JSONResponse(content=first.model_dump())`: every field,
        # compact), written by pydantic in one step instead of model_dump() and then json.dumps().
        response = Response(content=head.model_dump_json(), media_type="application/json")
        response.raw_headers += _arm_headers(route, arm)
        # Id and usage for feedback, limits and metrics, from the response object itself.
        self._health.succeeded(arm)
        usage = _usage(head)
        self._remember(getattr(head, "id", None), route, arm)
        self._keys.charge_tokens(key, (usage or {}).get("total_tokens") or 0, time.monotonic())
        self._metrics.record(route, arm, response.status_code, time.perf_counter() - start, None, None, usage)
        return response

    def _http_error(self, route: str, arm: str, start: float, code: int, message: str, kind: str) -> typing.NoReturn:
        """An arm's error answer: 5xx counts against the arm (ArmFailed); a client error goes back
        to the client as it is, without internal paths."""
        if code >= 500:
            raise ArmFailed(code, scrub(str(message)))
        self._metrics.record(route, arm, code, time.perf_counter() - start, None, None, None)
        raise OpenAIHTTPException(message=scrub(message), status_code=code, type=kind)

    async def _measured_stream(self, first: Any, items: AsyncIterator[Any], route: str, arm: str,
                               start: float, keep_usage: bool, key: str | None = None,
                               slot: _Slot | None = None) -> AsyncGenerator[str, None]:
        """The SSE text of `first` and then of every item of `items` (as `_openai_json_wrapper`),
        with the request's outcome, TTFT, inter-token latency and usage read on the way."""
        first_at = last = None
        usage = None
        done_sent = False
        outcome: int | str = names.OUTCOME_CLIENT_DISCONNECT  # unless the stream gets to its end
        try:
            item = first
            while True:
                text = _sse(item)
                if not done_sent and "[DONE]" in text and text.rstrip().endswith("data: [DONE]"):
                    done_sent = True
                if '"usage":{' in text:
                    text, usage = _split_usage(text, keep_usage, usage)
                if '"choices":[{' in text:
                    last = time.perf_counter()
                    if first_at is None:
                        first_at = last
                        self._remember(_response_id(text), route, arm)
                if 'data: {"error"' in text and outcome == names.OUTCOME_CLIENT_DISCONNECT:
                    code = _stream_error_code(text)
                    outcome = names.OUTCOME_STREAM_ERROR
                    if code is None or code >= 500:
                        self._arm_failed(arm, names.OUTCOME_STREAM_ERROR, f"error event with code {code}")
                if text:
                    yield text
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    break
            if not done_sent:
                yield "data: [DONE]\n\n"
            if outcome == names.OUTCOME_CLIENT_DISCONNECT:
                outcome = 200
                self._health.succeeded(arm)
        except Exception as exc:  # the arm died mid-stream: tell the client in the stream (headers are sent)
            outcome = names.OUTCOME_EXCEPTION
            self._arm_failed(arm, names.OUTCOME_EXCEPTION, f"{type(exc).__name__} mid-stream")
            error = _error_body(503, f"arm {arm!r} failed while streaming; retry the request")
            yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n"
        finally:
            # Runs on success, on engine errors and when the client disconnects (GeneratorExit / cancellation).
            end = time.perf_counter()
            ttft = first_at - start if first_at else None
            n_out = (usage or {}).get("completion_tokens") or 0
            itl = (last - first_at) / (n_out - 1) if first_at and last and n_out > 1 else None
            self._metrics.record(route, arm, outcome, end - start, ttft, itl, usage)
            self._keys.charge_tokens(key, (usage or {}).get("total_tokens") or 0, time.monotonic())
            if slot is not None:
                slot.release()

    # -- arm health ------------------------------------------------------------------------

    def _arm_failed(self, arm: str, outcome: str, detail: str) -> None:
        if self._health.failed(arm, time.monotonic(), outcome):
            logger.warning("corral: arm %r is out of its routes after a failure (%s: %s); its users go to the "
                           "route's healthy arms until a health probe succeeds", arm, outcome, detail)
            self._metrics.arm_up.set(0, {"arm": arm})
            if arm not in self._probes or self._probes[arm].done():
                self._probes[arm] = asyncio.get_running_loop().create_task(self._probe_until_up(arm))

    async def _probe_until_up(self, arm: str) -> None:
        """Ask the arm's `check_health` (LLMServer.check_health -> the vLLM engine's) until it answers."""
        while not self._health.is_up(arm):
            failover = self._admission.failover
            await asyncio.sleep(failover.probe_interval_s)
            if await self._probe(arm, failover.probe_timeout_s):
                out_s = self._health.recovered(arm, time.monotonic())
                if out_s is not None:
                    logger.warning("corral: arm %r is back after %.1f s (health probe succeeded)", arm, out_s)
                    self._metrics.arm_up.set(1, {"arm": arm})

    async def _probe(self, arm: str, timeout_s: float) -> bool:
        response = self._default_serve_handles[arm].check_health.remote()
        try:
            await asyncio.wait_for(asyncio.shield(_awaited(response)), timeout_s)
            return True
        except asyncio.TimeoutError:
            response.cancel()  # a replica that is restarting never answers: do not leave it queued
            return False
        except Exception:
            return False

    # -- feedback --------------------------------------------------------------------------

    def _remember(self, response_id: str | None, route: str, arm: str) -> None:
        if not response_id:
            return
        self._responses[response_id] = (route, arm)
        if len(self._responses) > 100_000:  # bounded memory: forget the oldest entries
            for key in list(self._responses)[:10_000]:
                del self._responses[key]

    async def feedback(self, request: Request) -> Response:
        """POST /v1/feedback {"response_id": "...", "score": 0..1} -> per-arm satisfaction metric."""
        _, denied = self._authorize(request)
        if denied is not None:
            return denied
        try:
            data = await request.json()
        except ValueError:
            raise OpenAIHTTPException(message="request body is not valid JSON", status_code=400, type="BadRequestError") from None
        rid, score = data.get("response_id") if isinstance(data, dict) else None, data.get("score") if isinstance(data, dict) else None
        if not isinstance(rid, str) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise OpenAIHTTPException(
                message="expected {'response_id': str, 'score': number in [0, 1]}", status_code=400, type="BadRequestError")
        if rid not in self._responses:
            raise OpenAIHTTPException(message=f"unknown response_id {rid!r}", status_code=404, type="NotFoundError")
        route, arm = self._responses[rid]
        self._metrics.feedback.observe(float(score), {"route": route, "arm": arm})
        return JSONResponse({"response_id": rid, "route": route, "arm": arm, "recorded": True})

    async def routes(self, request: Request) -> Response:
        """GET /v1/corral/routes: live route weights (admin scope when keys are enabled)."""
        _, denied = self._authorize(request, scope="admin") if self._keys.required else (None, None)
        if denied is not None:
            return denied
        return JSONResponse({"routes": self._routes, "arms": sorted(self._model_cards)})

    def __del__(self) -> None:
        """Serve calls this on a replica's graceful shutdown (ray/serve/_private/replica.py
        `call_destructor`): the counts not yet handed to Ray go now."""
        metrics = self.__dict__.get("_metrics")  # absent if __init__ failed before setting it
        if metrics is not None:
            metrics.flush()


def _error(denied: Denied) -> JSONResponse:
    headers = {"Retry-After": str(denied.retry_after_s)} if denied.retry_after_s else None
    return JSONResponse(_error_body(denied.status, denied.message), status_code=denied.status, headers=headers)


async def _awaited(response) -> Any:
    return await response


def _sticky_key(body, request: Request) -> str | None:
    return body.user or _header(request, _SESSION_HEADER_KEY) or _api_key(request)


def _stream_error_code(packet: str) -> int | None:
    """The `code` of the first error event in an SSE packet (vLLM's create_streaming_error_response)."""
    for line in packet.split("\n"):
        if line.startswith('data: {"error"'):
            try:
                code = json.loads(line[6:])["error"].get("code")
                return int(code) if code is not None else None
            except (ValueError, TypeError, KeyError, AttributeError):
                return None
    return None


@functools.cache
def _arm_headers(route: str, arm: str) -> tuple[tuple[bytes, bytes], ...]:
    """The response headers naming the arm and route (raw, as Starlette keeps them), built once per pair."""
    return ((ARM_HEADER.encode("latin-1"), arm.encode("latin-1")),
            (ROUTE_HEADER.encode("latin-1"), route.encode("latin-1")))


@functools.cache
def _token_fields(body_cls: Any) -> tuple[str, ...]:
    """The output-token limit fields a request class has (of `_TOKEN_FIELDS`), read once per class."""
    return tuple(f for f in _TOKEN_FIELDS if f in body_cls.model_fields)


def _usage(response: Any) -> dict[str, int | None] | None:
    """A response object's token counts (vLLM's UsageInfo), as the metrics and limits read them;
    None where it has none (a transcription's usage is audio seconds)."""
    usage = getattr(response, "usage", None)
    counts = {"prompt_tokens": getattr(usage, "prompt_tokens", None),
              "completion_tokens": getattr(usage, "completion_tokens", None),
              "total_tokens": getattr(usage, "total_tokens", None)}
    return counts if any(v is not None for v in counts.values()) else None


def _header(request: Request, name: bytes) -> str | None:
    """A request header's first value, read from the ASGI scope, where names are lower-case
    (the ASGI spec); without building Starlette's Headers for one lookup."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _api_key(request: Request) -> str | None:
    auth = _header(request, b"authorization") or ""
    return auth[7:] if auth.lower().startswith("bearer ") and len(auth) > 7 else None


def _response_id(packet: str) -> str | None:
    if packet.startswith('data: {"id":"'):  # vLLM's compact chunk JSON: the id is its first field
        end = packet.find('"', 13)
        if end > 13 and "\\" not in packet[13:end]:
            return packet[13:end]
    for line in packet.splitlines():
        if line.startswith("data: {"):
            try:
                return json.loads(line[6:]).get("id")
            except ValueError:
                return None
    return None


_JSON = json.JSONDecoder()


def _split_usage(packet: str, keep: bool, usage: dict | None) -> tuple[str, dict | None]:
    """Pull the usage out of SSE lines; drop the usage-only chunk unless the client asked for it.

    In vLLM's compact chunk JSON the one usage key (top level) is written `"usage":{`, and a quote
    inside a string value is escaped, so the first such text of a line starts its usage object:
    only that object is parsed. A chunk with no choice (`"choices":[]`, or none) is usage only."""
    kept = []
    for line in packet.split("\n\n"):
        at = line.find('"usage":{') if line.startswith("data: {") else -1
        if at >= 0:
            try:
                found, _ = _JSON.raw_decode(line, at + 8)
            except ValueError:
                kept.append(line)
                continue
            usage = found or usage
            if not keep and '"choices":[{' not in line:
                continue
        kept.append(line)
    return "\n\n".join(kept), usage
