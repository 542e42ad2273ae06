"""The ingress's own cost where tokens are fast: corral's ingress vs Ray Serve LLM's stock
`OpenAiIngress`, both over an engine stand-in that answers instantly (or at fixed token timings).

On a GPU the engine produces tokens 10-100x faster than on this machine's CPU, so the work the
ingress does per request and per streamed chunk (routing, admission, reading usage, metrics)
weighs more. This benchmark measures that work in one process, each ingress over the same
stand-in deployment handle (an async generator that yields what Ray Serve LLM's LLMServer
yields: one SSE chunk per token for streams, a ChatCompletionResponse otherwise), in two views
(`--views`):
- `app`: the ingress replica's whole work for an HTTP request. Each ingress is built as it is
  deployed (stock: `make_fastapi_ingress(OpenAiIngress)`, as Ray Serve LLM's builder does,
  ray/llm/_internal/serve/core/ingress/builder.py; corral: `serving.app.ingress_class()`) and
  the replica object is called with an ASGI scope and the request's JSON bytes, as Serve's
  replica calls it: middleware (Ray Serve LLM's, and corral's AdmissionGate), routing, body
  parsing and validation, the handler, the response's serialization, until the last body
  message is sent.
- `handler`: the endpoint method alone (`chat(body, request)` with a parsed body, then the
  response body consumed): the harshest view, without the work both share (middleware, body
  parsing), so corral's additions weigh most.
Not included in either, and the same for both: the HTTP proxy and the network, the Serve
handle hop to the engine, and Ray's metrics export (`ray.util.metrics` calls run, with no Ray
to export to). The heap built before measuring (Ray, vLLM, torch imports) is frozen, as Serve's
replica freezes it once the replica is initialized (`gc.collect(); gc.freeze()`,
ray/serve/_private/replica.py, under RAY_SERVE_FREEZE_GC_ON_STARTUP, on by default): unfrozen, a
full collection of it (~0.3 s here, about once per 1000 requests) lands in one block and not the
other.

What each side does, so the ratio reads right:
- corral does work the stock ingress does not: API-key and admission checks, the arm pick (the
  benchmark's route has one arm, so no hash is computed; a two-arm route adds one blake2b per arm),
  a concurrency slot, usage read from every answer, one metrics record per request (kept in the
  process, handed to Ray once a second), per stream chunk a few substring tests and a clock
  read, and in the `app` view its AdmissionGate (arrival stamp, header and body limits, media
  type, UTF-8 check, error-body scrubbing).
- corral does not call the stock `OpenAiIngress._process_llm_request`: it runs the same steps
  itself (serving/ingress.py `CorralIngress._attempt`), reading the stock `_get_response`, and
  streams through one generator where the stock path stacks two (`_peek_at_generator`'s and
  `_openai_json_wrapper`). So on streams the ratio nets corral's extra work against a generator
  hop per chunk it saves, i.e. it is corral's whole cost relative to the stock ingress, not the
  cost of corral's additions alone.
- the stand-in yields one chunk per token: the per-chunk path at its most frequent (a real
  LLMServer batches chunks when tokens come faster than the loop turns).

Paired design: every round runs one block per ingress, in alternating order; ratios are per
round (corral / stock) with a 95% t interval over rounds (geometric mean), as in
router_overhead.py. Levels: c=1 and c=64 concurrent requests, streaming and not, for each view
and engine stand-in (`--engines`): `instant` (the ingress's own cost) and two paced ones at
fixed token timings (what that cost is beside an engine that takes time to answer).

    .venv/bin/python benchmarks/ingress_overhead.py [--rounds 30] [--requests 200] [--tokens 64]
        [--engines instant,x10,x100] [--views app,handler] [--paced-requests 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

GOAL = {"p50_latency_ratio_max": 1.05, "throughput_ratio_min": 0.95}
VIEWS = ("app", "handler")

# Engine stand-ins: (first token s, each next token s). `instant` measures the ingress's work
# alone. The paced ones answer about 10x and 100x faster than this machine's engines (tokens
# 29-100 ms apart in docs/migration-demo): 20 ms / 3 ms per token, and 2 ms / 0.3 ms. asyncio's
# selector rounds a timeout up to whole milliseconds (selectors.EpollSelector.select), so `x100`'s
# effective token interval is over 1 ms (`stock_p50_latency_s` shows it).
ENGINES = {"instant": (0.0, 0.0), "x10": (0.020, 0.003), "x100": (0.002, 0.0003)}


def _packets(tokens: int, with_usage: bool) -> list[str]:
    # Compact JSON, as vLLM writes its chunks (pydantic's model_dump_json), which is what corral's
    # stream reader looks for ('"choices":[{'); spaced JSON would skip its per-token clock reads.
    chunks = [
        "data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "arm",
                               "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}]},
                              separators=(",", ":")) + "\n\n"
        for _ in range(tokens)
    ]
    usage = ('data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"arm","choices":[],'
             f'"usage":{{"prompt_tokens":8,"completion_tokens":{tokens},"total_tokens":{tokens + 8}}}}}\n\n')
    return chunks + ([usage] if with_usage else []) + ["data: [DONE]\n\n"]


class StandInArm:
    """A deployment handle stand-in whose engine answers at once, or after fixed token timings:
    the first token `ttft_s` after the call, each next one `itl_s` later (a whole answer after
    both, as the engine would take that long to generate it)."""

    def __init__(self, tokens: int, ttft_s: float = 0.0, itl_s: float = 0.0) -> None:
        from corral.serving._ray_compat import ChatCompletionResponse

        self.ttft_s, self.itl_s, self.tokens = ttft_s, itl_s, tokens
        self.packets = _packets(tokens, with_usage=False)
        self.packets_with_usage = _packets(tokens, with_usage=True)
        self.full = ChatCompletionResponse(
            id="chatcmpl-bench", model="arm",
            choices=[{"index": 0, "message": {"role": "assistant", "content": "tok " * tokens}, "finish_reason": "length"}],
            usage={"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": tokens + 8})

    def options(self, **_):
        return self

    def stream_packets(self, body) -> list[str]:
        """A stream's SSE packets: the usage chunk only when the request asks for it, as vLLM
        sends it (stream_options.include_usage). corral's ingress always asks, for its metrics,
        and strips it again for a client that did not."""
        asked = body.stream_options is not None and body.stream_options.include_usage
        return self.packets_with_usage if asked else self.packets

    @property
    def chat(self):
        return self

    def remote(self, body, raw_request_info=None):
        return self._run(body)

    async def _run(self, body):
        # Each item comes back over the Serve handle in reality: one trip through the event loop.
        if body.stream:
            for i, packet in enumerate(self.stream_packets(body)):
                await asyncio.sleep(self.ttft_s if i == 0 else self.itl_s if i < self.tokens else 0)
                yield [packet]  # one chunk per token: the per-chunk path at its most frequent
        else:
            await asyncio.sleep(self.ttft_s + self.itl_s * (self.tokens - 1))
            yield self.full


def _cards():
    from corral.serving._ray_compat import ModelCard

    return {"arm": ModelCard(id="arm", object="model", owned_by="bench", permission=[], metadata={})}


def build(kind: str, tokens: int, ttft_s: float = 0.0, itl_s: float = 0.0):
    """(ingress object, model to ask for): the class itself, for the `handler` view."""
    from ray.serve.llm.ingress import OpenAiIngress

    from corral.serving.ingress import CorralIngress

    arm = StandInArm(tokens, ttft_s, itl_s)
    if kind == "stock":
        return OpenAiIngress({"arm": arm}, _cards()), "arm"
    ingress = CorralIngress({"arm": arm}, _cards())
    ingress.reconfigure({"routes": {"route": {"arm": 100}}})
    return ingress, "route"


# Serve resolves an ingress method's `self` to the replica's object through
# `serve.get_replica_context().servable_object` (ray/serve/_private/http_util.py,
# make_fastapi_class_based_view's get_current_servable_instance); here the replica under test.
_REPLICA = types.SimpleNamespace(servable_object=None)


def _replica_context():
    return _REPLICA


@contextlib.contextmanager
def replica_contexts():
    """While in it, Serve's `get_replica_context()` answers the replica under test (`_serving`)."""
    from ray import serve

    real, serve.get_replica_context = serve.get_replica_context, _replica_context
    try:
        yield
    finally:
        serve.get_replica_context = real


async def build_replica(kind: str, tokens: int, ttft_s: float = 0.0, itl_s: float = 0.0):
    """(replica object, model to ask for) for the `app` view: the ingress class as it is deployed,
    constructed as Serve's replica constructs it (its __init__ is async)."""
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    from corral.serving.app import ingress_class

    # The wrapper's async __del__ is Serve's to await on shutdown; nobody awaits it here.
    warnings.filterwarnings("ignore", message="coroutine .*__del__' was never awaited")
    cls = make_fastapi_ingress(OpenAiIngress) if kind == "stock" else ingress_class()
    replica = cls.__new__(cls)
    await replica.__init__({"arm": StandInArm(tokens, ttft_s, itl_s)}, _cards())
    if kind == "stock":
        return replica, "arm"
    replica.reconfigure({"routes": {"route": {"arm": 100}}})
    return replica, "route"


def _request():
    from fastapi import Request

    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                    "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
                    "server": ("127.0.0.1", 8000), "scheme": "http"})


async def one(ingress, model: str, stream: bool, user: str) -> float:
    """One request through the endpoint method (`handler` view); its latency (s)."""
    from corral.serving._ray_compat import ChatCompletionRequest

    body = ChatCompletionRequest(model=model, messages=[{"role": "user", "content": "hi"}], stream=stream, user=user)
    t0 = time.perf_counter()
    response = await ingress.chat(body, _request())
    if stream:
        async for _ in response.body_iterator:
            pass
    else:
        assert response.status_code == 200
    return time.perf_counter() - t0


async def call_app(replica, body: bytes, content_type: bytes = b"application/json") -> tuple[int, bytes]:
    """One HTTP request through a replica's ASGI app, as Serve's replica hands it over: (status,
    the response body). The client stays connected until the answer is complete."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", content_type),
                         (b"content-length", str(len(body)).encode())]}
    received = False
    status, parts = 0, []
    finished = asyncio.Event()

    async def receive():
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # what a server's receive does until the client goes away
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    await replica(scope, receive, send)
    return status, b"".join(parts)


async def one_app(replica, model: str, stream: bool, user: str) -> float:
    """One request through the replica's app (`app` view); its latency (s), from the request's
    bytes to the answer's last byte."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                       "user": user}).encode()
    t0 = time.perf_counter()
    status, _ = await call_app(_serving(replica), body)
    elapsed = time.perf_counter() - t0
    assert status == 200, status
    return elapsed


def _serving(replica):
    _REPLICA.servable_object = replica
    return replica


async def block(ingress, model: str, concurrency: int, requests: int, stream: bool, view: str = "handler") -> dict:
    latencies: list[float] = []
    per_worker = max(1, requests // concurrency)
    request = one_app if view == "app" else one

    async def worker(w: int) -> None:
        for i in range(per_worker):
            latencies.append(await request(ingress, model, stream, f"user-{w}-{i}"))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    from corral.common.stats import quantile

    return {"p50_s": statistics.median(latencies), "p99_s": quantile(latencies, 0.99),
            "requests_per_s": len(latencies) / wall}


def paired(ratios: list[float]) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from corral.common.stats import t_critical

    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = t_critical(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return {"ratio": round(math.exp(mean), 4), "ci95": [round(math.exp(mean - half), 4), round(math.exp(mean + half), 4)],
            "pairs": len(logs)}


async def level(concurrency: int, stream: bool, rounds: int, requests: int, tokens: int,
                engine: str = "instant", view: str = "handler") -> dict:
    if view == "app":
        with replica_contexts():
            return await _level(concurrency, stream, rounds, requests, tokens, engine, view)
    return await _level(concurrency, stream, rounds, requests, tokens, engine, view)


async def _level(concurrency: int, stream: bool, rounds: int, requests: int, tokens: int, engine: str,
                 view: str) -> dict:
    ttft_s, itl_s = ENGINES[engine]
    if view == "app":
        apps = {kind: await build_replica(kind, tokens, ttft_s, itl_s) for kind in ("stock", "corral")}
    else:
        apps = {kind: build(kind, tokens, ttft_s, itl_s) for kind in ("stock", "corral")}
    for ingress, model in apps.values():  # warm-up (imports, first-call caches)
        await block(ingress, model, concurrency, min(requests, 64), stream, view)
    gc.collect()
    gc.freeze()  # as Serve's replica does after its start-up (see the module's docstring)
    lat, tput, stock_p50 = [], [], []
    try:
        for r in range(rounds):
            order = ("stock", "corral") if r % 2 == 0 else ("corral", "stock")
            got = {kind: await block(*apps[kind], concurrency, requests, stream, view) for kind in order}
            lat.append(got["corral"]["p50_s"] / got["stock"]["p50_s"])
            tput.append(got["corral"]["requests_per_s"] / got["stock"]["requests_per_s"])
            stock_p50.append(got["stock"]["p50_s"])
    finally:
        gc.unfreeze()
    p50, thr = paired(lat), paired(tput)
    return {
        "view": view, "engine": engine, "engine_ttft_s": ttft_s, "engine_itl_s": itl_s,
        "stock_p50_latency_s": round(statistics.median(stock_p50), 6),
        "concurrency": concurrency, "stream": stream, "tokens_per_response": tokens,
        "p50_latency_ratio_corral_vs_stock": p50, "throughput_ratio_corral_vs_stock": thr,
        "goal_met_at_95": p50["ci95"][1] <= GOAL["p50_latency_ratio_max"] and thr["ci95"][0] >= GOAL["throughput_ratio_min"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="paired rounds per level")
    ap.add_argument("--requests", type=int, default=200, help="requests per block")
    ap.add_argument("--tokens", type=int, default=64, help="tokens (stream chunks) per response")
    ap.add_argument("--engines", default="instant,x10,x100",
                    help=f"engine stand-ins to run, comma-separated, of {sorted(ENGINES)}")
    ap.add_argument("--views", default="app,handler",
                    help="what each request goes through, comma-separated: app (the replica's FastAPI app: "
                         "middleware, body parsing, the handler) and/or handler (the endpoint method alone)")
    ap.add_argument("--paced-requests", type=int, default=32,
                    help="requests per block with a paced engine (at least one per concurrent client)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the interval needs two pairs)")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        ap.error(f"--engines: unknown {unknown}; choose from {sorted(ENGINES)}")
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    if not views or any(v not in VIEWS for v in views):
        ap.error(f"--views: {args.views!r}; choose from {list(VIEWS)}")
    import logging

    logging.disable(logging.WARNING)
    levels = [asyncio.run(level(c, s, args.rounds, args.requests if e == "instant" else args.paced_requests,
                                args.tokens, e, v))
              for v in views for e in engines for c in (1, 64) for s in (False, True)]
    out = {
        "benchmark": "ingress_overhead", "where": f"in-process, {platform.processor() or platform.machine()}, "
                                                  f"python {platform.python_version()}",
        "what": "corral's ingress vs Ray Serve LLM's OpenAiIngress over an engine stand-in (instant, or at "
                "fixed token timings), through the replica's app (middleware, body parsing, handler) or the "
                "handler alone; no HTTP proxy, no Serve handle hop, no Ray metrics export",
        "goal": GOAL, "rounds": args.rounds, "requests_per_block": args.requests,
        "requests_per_block_paced": args.paced_requests, "levels": levels,
        "goal_met_at_95_by_view_and_engine": {
            f"{v}/{e}": all(lv["goal_met_at_95"] for lv in levels if lv["engine"] == e and lv["view"] == v)
            for v in views for e in engines},
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
