"""corral's OpenAI ingress: Ray Serve LLM's `OpenAiIngress`, extended with routes.

A request names a *route* (e.g. `llama`), and the ingress picks one of the route's arms by
weight (sticky per user, see `split.py`) before handing the request to that arm's LLMServer
deployment, exactly as the stock ingress would. No extra hop: this class *is* the ingress.

Route weights arrive through Serve's `user_config` (`reconfigure`), so changing them is a
lightweight in-place update: no replica restarts, no dropped requests.
"""

from __future__ import annotations

import json
import time
import typing
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from fastapi import Request, status
from ray.serve.llm.ingress import OpenAiIngress
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral.cluster import metric_names as names
from corral.serving import _ray_compat
from corral.serving._ray_compat import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIHTTPException,
)
from corral.serving.auth import Denied, KeyRing
from corral.serving.split import pick_arm

ARM_HEADER = "x-corral-arm"
ROUTE_HEADER = "x-corral-route"
SESSION_HEADER = "x-session-id"


def log_buckets(low_s: float, high_s: float, per_decade: int = 20) -> list[float]:
    """Geometric histogram boundaries from low_s to high_s, `per_decade` per factor of ten
    (20 = 12% apart), rounded to 3 significant digits.

    Fine buckets matter twice here: SLO gates read quantiles off these histograms, and Ray's
    metrics exporter turns every observation into its bucket's *midpoint* (so `_sum`/`_count`
    means are only as exact as the buckets are narrow: at 12% apart, within about 6%).
    """
    if not 0 < low_s < high_s or per_decade < 1:
        raise ValueError(f"need 0 < low_s ({low_s}) < high_s ({high_s}) and per_decade ({per_decade}) >= 1")
    out: list[float] = []
    k = 0
    while True:
        b = float(f"{low_s * 10 ** (k / per_decade):.3g}")
        if b > high_s * (1 + 1e-9):
            return out
        if not out or b > out[-1]:
            out.append(b)
        k += 1


# SLO metrics (TTFT, ITL) 12% apart; end-to-end latency, which spans more, 26% apart and with
# a 10.0 boundary (the rollout's goodput gate counts requests under 10 s).
TTFT_BUCKETS_S = log_buckets(0.005, 120)
ITL_BUCKETS_S = log_buckets(0.001, 2)
LATENCY_BUCKETS_S = log_buckets(0.01, 600, per_decade=10)


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

    def record(self, route: str, arm: str, code: int, latency_s: float, ttft_s: float | None,
               itl_s: float | None, usage: dict | None) -> None:
        tags = {"route": route, "arm": arm}
        self.requests.inc(1, {**tags, "status": str(code)})
        self.latency.observe(latency_s, tags)
        if ttft_s is not None:
            self.ttft.observe(ttft_s, tags)
        if itl_s is not None:
            self.itl.observe(itl_s, tags)
        if usage:
            if usage.get("prompt_tokens"):
                self.input_tokens.inc(usage["prompt_tokens"], tags)
            if usage.get("completion_tokens"):
                self.output_tokens.inc(usage["completion_tokens"], tags)


class ArrivalStamp:
    """Pure ASGI middleware (the outermost one): stamps when a request reached the ingress, so
    the ingress's TTFT and latency include body parsing and validation, as a client sees them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[ARRIVAL_KEY] = time.perf_counter()
        await self.app(scope, receive, send)


ARRIVAL_KEY = "corral_arrival_s"


def ingress_app():
    """Ray Serve LLM's FastAPI app (its middleware and error handlers) plus ArrivalStamp."""
    app = _ray_compat.ingress_fastapi_app()
    app.add_middleware(ArrivalStamp)  # added last = runs first
    return app


def _arrival(request: Request) -> float:
    return (request.scope.get("state") or {}).get(ARRIVAL_KEY) or time.perf_counter()


class CorralIngress(OpenAiIngress):
    """OpenAI ingress with weighted, sticky routes over arms."""

    def __init__(self, llm_deployments, model_cards, *, lora_paths=None, **kwargs):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths, **kwargs)
        self._routes: dict[str, dict[str, int]] = {}
        self._keys = KeyRing()
        self._responses: dict[str, tuple[str, str]] = {}  # response id -> (route, arm), for feedback
        self._metrics = RequestMetrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new route weights in place (Serve calls this on a user_config change)."""
        routes = {name: {arm: int(w) for arm, w in weights.items()} for name, weights in user_config.get("routes", {}).items()}
        unknown = {arm for weights in routes.values() for arm in weights if arm not in self._model_cards}
        if unknown:
            # Refuse the whole update rather than serve a half-applied split.
            raise ValueError(f"routes name unknown arms {sorted(unknown)}; arms are {sorted(self._model_cards)}")
        self._routes = routes
        self._keys = KeyRing.from_config(user_config.get("auth"), previous=self._keys)

    def _authorize(self, request: Request, scope: str = "inference") -> tuple[str | None, Response | None]:
        """(key hash, None) or (None, an OpenAI-format error response)."""
        digest, denied = self._keys.identify(_api_key(request))
        denied = denied or self._keys.check(digest, time.monotonic(), scope)
        return digest, (_error(denied) if denied else None)

    # -- routing ---------------------------------------------------------------------------

    def _resolve(self, body: ChatCompletionRequest | CompletionRequest, request: Request) -> tuple[str, str]:
        """(route, arm) for a request; pins when `model` names an arm."""
        model = body.model
        if model in self._model_cards:
            return model, model
        weights = self._routes.get(model)
        if weights is None:
            raise OpenAIHTTPException(
                message=f"The model {model!r} does not exist. Available: {sorted(self._routes) + sorted(self._model_cards)}",
                status_code=status.HTTP_404_NOT_FOUND,
                type="NotFoundError",
            )
        key = body.user or request.headers.get(SESSION_HEADER) or _api_key(request)
        return model, pick_arm(weights, key)

    async def models(self, request: Request | None = None) -> ModelList | Response:
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

    async def _routed(self, body, request: Request, call_method: str) -> Response:
        key, denied = self._authorize(request)
        if denied is not None:
            return denied
        route, arm = self._resolve(body, request)
        body.model = arm
        client_wants_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            # Usage in the last chunk gives exact token counts for metrics; it is stripped again
            # below if the client did not ask for it.
            body.stream_options = _with_usage(body)
        start = _arrival(request)
        try:
            response = await _ray_compat.process_llm_request(self, body, call_method, request)
        except OpenAIHTTPException as exc:
            self._metrics.record(route, arm, exc.status_code, time.perf_counter() - start, None, None, None)
            raise
        headers = {ARM_HEADER: arm, ROUTE_HEADER: route}
        if isinstance(response, StreamingResponse):
            stream = self._measured_stream(response.body_iterator, route, arm, start, client_wants_usage, key)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        # Read id and usage for feedback, limits and metrics; return the engine's bytes as they are.
        payload = json.loads(response.body)
        self._remember(payload.get("id"), route, arm)
        self._keys.charge_tokens(key, (payload.get("usage") or {}).get("total_tokens") or 0, time.monotonic())
        self._metrics.record(route, arm, response.status_code, time.perf_counter() - start, None, None, payload.get("usage"))
        response.headers.update(headers)
        return response

    async def _measured_stream(self, packets: AsyncIterable[str | bytes | memoryview], route: str, arm: str,
                               start: float, keep_usage: bool, key: str | None = None) -> AsyncGenerator[str, None]:
        first = last = None
        usage = None
        try:
            async for packet in packets:
                text = packet if isinstance(packet, str) else bytes(packet).decode()
                now = time.perf_counter()
                if '"usage":{' in text:
                    text, usage = _split_usage(text, keep_usage, usage)
                if '"choices":[{' in text:
                    first = first or now
                    last = now
                    if usage is None and first == now:
                        self._remember(_response_id(text), route, arm)
                if text:
                    yield text
        finally:
            # Runs on success, on engine errors and when the client disconnects.
            end = time.perf_counter()
            ttft = first - start if first else None
            n_out = (usage or {}).get("completion_tokens") or 0
            itl = (last - first) / (n_out - 1) if first and last and n_out > 1 else None
            self._metrics.record(route, arm, 200, end - start, ttft, itl, usage)
            self._keys.charge_tokens(key, (usage or {}).get("total_tokens") or 0, time.monotonic())

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


def _error(denied: Denied) -> JSONResponse:
    kind = {401: "AuthenticationError", 403: "PermissionDeniedError", 429: "RateLimitError"}.get(denied.status, "Error")
    headers = {"Retry-After": str(denied.retry_after_s)} if denied.retry_after_s else None
    body = {"error": {"message": denied.message, "type": kind, "param": None, "code": denied.status}}
    return JSONResponse(body, status_code=denied.status, headers=headers)


def _with_usage(body) -> Any:
    """The request's stream_options with include_usage on (vLLM's own StreamOptions type)."""
    if body.stream_options is not None:
        return body.stream_options.model_copy(update={"include_usage": True})
    annotation = type(body).model_fields["stream_options"].annotation
    options_cls = next(a for a in typing.get_args(annotation) if a is not type(None))
    return options_cls(include_usage=True)


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") and len(auth) > 7 else None


def _response_id(packet: str) -> str | None:
    for line in packet.splitlines():
        if line.startswith("data: {"):
            try:
                return json.loads(line[6:]).get("id")
            except ValueError:
                return None
    return None


def _split_usage(packet: str, keep: bool, usage: dict | None) -> tuple[str, dict | None]:
    """Pull the usage out of SSE lines; drop the usage-only chunk unless the client asked for it."""
    kept = []
    for line in packet.split("\n\n"):
        if line.startswith("data: {") and '"usage":{' in line:
            try:
                chunk = json.loads(line[6:])
            except ValueError:
                kept.append(line)
                continue
            usage = chunk.get("usage") or usage
            if not keep and not chunk.get("choices"):
                continue
        kept.append(line)
    return "\n\n".join(kept), usage
