"""A deterministic OpenAI-compatible streaming server with known token timings.

It exists to check the load generator's measurements against ground truth and to exercise
the capacity planner without GPUs. Each arm is simulated in one of two modes:

* `fixed`: every request is independent; the first token is sent `ttft_s` after the request
  arrives and each further token `itl_s` after the previous one (deadlines, so no drift).
  These are the *known timings* the metric-correctness tests compare against.
* `batched`: a continuous-batching engine per replica, the one engine model
  (`corral.common.engine_model.Engine`, shared with the capacity planner and the autoscaler
  simulator): vLLM's scheduler (at most `max_num_seqs` running, `max_num_batched_tokens` per
  step shared by decodes and prefill chunks, first come first served) with the step time
  `step_base_s + step_per_seq_s * decoding sequences + prefill_per_token_s * prompt tokens in
  the step + step_per_kv_token_s * context tokens`. The loop sleeps each step's modelled time,
  then hands out its tokens. Replicas are chosen least-loaded first. Latency therefore grows
  with load the way a real replica's does.

Token counting: a prompt's tokens are its whitespace-separated words (plus `prompt_overhead`).
Output length: `max_tokens` when `ignore_eos` or `min_tokens` forces it, else
min(max_tokens, natural_output_tokens). Streams carry `usage` when asked
(`stream_options.include_usage`), in the last chunk, like vLLM.

Run: `python -m corral.loadtests.mockserver --port 0 [--config FILE.json]`; the first stdout line
is `listening on http://127.0.0.1:PORT`. Only binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from corral.common.engine_model import DEFAULT_MAX_NUM_BATCHED_TOKENS, Engine, StepModel


@dataclass
class ArmConfig:
    """One simulated arm (model variant)."""

    name: str = "mock"
    mode: str = "fixed"
    """`fixed` (independent known timings) or `batched` (continuous-batching engine)."""
    ttft_s: float = 0.05
    """fixed: time to the first token."""
    itl_s: float = 0.01
    """fixed: time between tokens."""
    step_base_s: float = 0.010
    """batched: fixed cost of one engine iteration, seconds (`StepModel.base_s`)."""
    step_per_seq_s: float = 0.001
    """batched: extra iteration cost per decoding sequence, seconds (`StepModel.per_decode_seq_s`)."""
    prefill_per_token_s: float = 0.00002
    """batched: extra iteration cost per prompt token computed in it, seconds (`StepModel.per_prefill_token_s`)."""
    step_per_kv_token_s: float = 0.0
    """batched: extra iteration cost per context token attended to, seconds (`StepModel.per_kv_token_s`)."""
    max_num_seqs: int = 16
    """batched: largest running batch per replica."""
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    """batched: tokens per step (decodes first, then prefill chunks), vLLM's budget."""
    replicas: int = 1
    """batched: independent engines behind the arm."""
    natural_output_tokens: int = 32
    """Answer length when the output length is not forced."""
    prompt_overhead: int = 0
    """Tokens added to the word count of every prompt (e.g. a BOS token)."""

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "batched"):
            raise ValueError(f"arm {self.name!r}: mode={self.mode!r} is not 'fixed' or 'batched'")
        for key in ("ttft_s", "itl_s", "step_base_s", "step_per_seq_s", "prefill_per_token_s", "step_per_kv_token_s"):
            if getattr(self, key) < 0:
                raise ValueError(f"arm {self.name!r}: {key}={getattr(self, key)} is negative")
        for key in ("max_num_seqs", "max_num_batched_tokens", "replicas", "natural_output_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"arm {self.name!r}: {key}={getattr(self, key)} must be >= 1")


@dataclass
class MockConfig:
    arms: list[ArmConfig] = field(default_factory=lambda: [ArmConfig()])
    routes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Route name -> {arm: weight}. Arms are also reachable by their own names."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MockConfig:
        unknown = set(data) - {"arms", "routes"}
        if unknown:
            raise ValueError(f"unknown mock config key(s) {sorted(unknown)}")
        arms = [ArmConfig(**a) for a in data.get("arms", [{}])]
        routes = {k: dict(v) for k, v in (data.get("routes") or {}).items()}
        names = {a.name for a in arms}
        for route, weights in routes.items():
            missing = set(weights) - names
            if missing:
                raise ValueError(f"route {route!r} names unknown arm(s) {sorted(missing)}")
            if sum(weights.values()) <= 0:
                raise ValueError(f"route {route!r}: weights sum to 0")
        return cls(arms=arms, routes=routes)


class _Engine:
    """One replica: the shared engine model's scheduler, stepped in (asyncio) real time."""

    def __init__(self, arm: ArmConfig):
        step = StepModel(arm.step_base_s, arm.step_per_seq_s, arm.prefill_per_token_s, arm.step_per_kv_token_s)
        self.engine = Engine(step, arm.max_num_seqs, arm.max_num_batched_tokens)
        self._streams: dict[int, asyncio.Queue[bool]] = {}
        self._keys = itertools.count()
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def load(self) -> int:
        return self.engine.ongoing

    def submit(self, input_tokens: int, output_tokens: int) -> asyncio.Queue[bool]:
        """Queue a request; its queue gets one item per token (True with the last)."""
        key = next(self._keys)
        stream: asyncio.Queue[bool] = asyncio.Queue()
        self._streams[key] = stream
        self.engine.submit(key, input_tokens, output_tokens)
        self._wake.set()
        return stream

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            step = self.engine.schedule()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await _sleep_until(loop, loop.time() + step.duration_s)
            done = {s.key for s in self.engine.finish(loop.time())}
            for key in self.engine.last_tokens:
                self._streams[key].put_nowait(key in done)
            for key in done:
                del self._streams[key]


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class MockServer:
    """The HTTP side: a small HTTP/1.1 server (keep-alive, chunked streaming) on 127.0.0.1."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.arms = {a.name: a for a in config.arms}
        self._engines: dict[str, list[_Engine]] = {}
        self._rr = itertools.count()
        self._route_counters: dict[str, int] = {}
        self._ttft_sum = 0.0
        self._ttft_count = 0
        self._requests = 0
        self._server: asyncio.base_events.Server | None = None

    # -------------------------------------------------------------- routing and generation

    def _pick_arm(self, model: str) -> str:
        if model in self.arms:
            return model
        weights = self.config.routes.get(model)
        if weights is None:
            if len(self.arms) == 1 and not self.config.routes:
                return next(iter(self.arms))
            raise KeyError(model)
        # Deterministic weighted round robin: request k goes to the arm whose cumulative
        # share first exceeds k mod total.
        k = self._route_counters.get(model, 0)
        self._route_counters[model] = k + 1
        total = sum(weights.values())
        slot = (k * 37) % total  # spread consecutive requests over the range
        acc = 0
        for arm, w in weights.items():
            acc += w
            if slot < acc:
                return arm
        return next(iter(weights))

    def _engine(self, arm: ArmConfig) -> _Engine:
        engines = self._engines.get(arm.name)
        if engines is None:
            engines = self._engines[arm.name] = [_Engine(arm) for _ in range(arm.replicas)]
        low = min(e.load for e in engines)
        candidates = [e for e in engines if e.load == low]
        return candidates[next(self._rr) % len(candidates)]

    async def _tokens(self, arm: ArmConfig, input_tokens: int, output_tokens: int, t0: float):
        """Yield once per generated token at the simulated time."""
        loop = asyncio.get_running_loop()
        if arm.mode == "fixed":
            for i in range(output_tokens):
                await _sleep_until(loop, t0 + arm.ttft_s + i * arm.itl_s)
                yield i
            return
        stream = self._engine(arm).submit(input_tokens, output_tokens)
        for i in range(output_tokens):
            await stream.get()
            yield i

    # ---------------------------------------------------------------------- HTTP handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small SSE chunks must leave at once, not wait for Nagle + delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                t0 = asyncio.get_running_loop().time()
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                keep = await self._dispatch(method, path.split("?")[0], body, writer, t0)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _send(self, writer, status: int, payload: Any, extra_headers: dict[str, str] | None = None,
                    content_type: str = "application/json") -> bool:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
        hdrs = {"content-type": content_type, "content-length": str(len(body)), **(extra_headers or {})}
        writer.write(f"HTTP/1.1 {status} {reason}\r\n".encode()
                     + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n" + body)
        await writer.drain()
        return True

    def _error(self, message: str, code: int = 400) -> dict:
        return {"error": {"message": message, "type": "BadRequestError", "code": code}}

    async def _dispatch(self, method: str, path: str, body: bytes, writer, t0: float) -> bool:
        if method == "GET" and path == "/v1/models":
            names = list(self.config.routes) + list(self.arms)
            return await self._send(writer, 200, {"object": "list", "data": [
                {"id": n, "object": "model", "owned_by": "corral-mock"} for n in names]})
        if method == "GET" and path == "/metrics":
            text = (
                "# TYPE mock_ttft_seconds summary\n"
                f"mock_ttft_seconds_sum {self._ttft_sum}\nmock_ttft_seconds_count {self._ttft_count}\n"
                f"# TYPE mock_requests_total counter\nmock_requests_total {self._requests}\n"
            )
            return await self._send(writer, 200, text.encode(), content_type="text/plain; version=0.0.4")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return await self._send(writer, 404, self._error(f"no route {path}", 404))
        if method != "POST":
            return await self._send(writer, 405, self._error(f"{method} not allowed", 405))
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return await self._send(writer, 400, self._error("body is not JSON"))
        chat = path.endswith("chat/completions")
        try:
            arm = self.arms[self._pick_arm(req.get("model", ""))]
        except KeyError:
            return await self._send(writer, 404, self._error(f"model {req.get('model')!r} does not exist", 404))
        if chat:
            text = " ".join(str(m.get("content", "")) for m in req.get("messages") or [])
        else:
            prompt = req.get("prompt", "")
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        input_tokens = len(text.split()) + arm.prompt_overhead
        max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        forced = bool(req.get("ignore_eos")) or int(req.get("min_tokens") or 0) >= max_tokens
        output_tokens = max_tokens if forced else min(max_tokens, arm.natural_output_tokens)
        self._requests += 1
        rid = f"cmpl-mock-{self._requests}"
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                 "total_tokens": input_tokens + output_tokens}
        hdrs = {"x-corral-arm": arm.name}
        obj = "chat.completion.chunk" if chat else "text_completion"

        if not req.get("stream"):
            async for _ in self._tokens(arm, input_tokens, output_tokens, t0):
                pass
            text_out = " tok" * output_tokens
            choice = ({"index": 0, "message": {"role": "assistant", "content": text_out}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text_out, "finish_reason": "length"})
            return await self._send(writer, 200, {"id": rid, "object": obj.replace(".chunk", ""), "model": arm.name,
                                                  "choices": [choice], "usage": usage}, hdrs)

        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                     + f"x-corral-arm: {arm.name}\r\n\r\n".encode())
        loop = asyncio.get_running_loop()

        async def event(data: str) -> None:
            chunk = f"data: {data}\n\n".encode()
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()

        created = int(time.time())
        async for i in self._tokens(arm, input_tokens, output_tokens, t0):
            if i == 0:
                self._ttft_sum += loop.time() - t0
                self._ttft_count += 1
            last = i == output_tokens - 1
            finish = "length" if last else None
            choice = ({"index": 0, "delta": {"content": " tok"}, "finish_reason": finish} if chat
                      else {"index": 0, "text": " tok", "finish_reason": finish})
            await event(json.dumps({"id": rid, "object": obj, "created": created, "model": arm.name,
                                    "choices": [choice]}))
        if (req.get("stream_options") or {}).get("include_usage"):
            await event(json.dumps({"id": rid, "object": obj, "created": created, "model": arm.name,
                                    "choices": [], "usage": usage}))
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    # ---------------------------------------------------------------------------- running

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=1024)
        return self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        async with self._server:
            await self._server.serve_forever()


@contextlib.contextmanager
def spawn(config: dict[str, Any] | None = None, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Run the mock server in a child process for the duration of a `with` block; yields its base URL."""
    cmd = [sys.executable, "-m", "corral.loadtests.mockserver", "--port", "0"]
    if config is not None:
        cmd += ["--config", json.dumps(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = _readline_with_timeout(proc, startup_timeout_s)
        if not line.startswith("listening on "):
            raise RuntimeError(f"mock server did not start (exit {proc.poll()}): {line!r}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _readline_with_timeout(proc: subprocess.Popen, timeout_s: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not result:
        raise RuntimeError(f"mock server printed nothing within {timeout_s:g} s")
    return result[0].strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m corral.loadtests.mockserver", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = a free one)")
    p.add_argument("--config", help="JSON file or inline JSON: {arms: [ArmConfig...], routes: {name: {arm: weight}}}")
    p.add_argument("--ttft-s", type=float, help="shortcut: one fixed-mode arm with this TTFT")
    p.add_argument("--itl-s", type=float, help="shortcut: one fixed-mode arm with this ITL")
    args = p.parse_args(argv)
    if args.config:
        raw = args.config if args.config.lstrip().startswith("{") else open(args.config).read()
        config = MockConfig.from_dict(json.loads(raw))
    else:
        arm = ArmConfig()
        if args.ttft_s is not None:
            arm.ttft_s = args.ttft_s
        if args.itl_s is not None:
            arm.itl_s = args.itl_s
        config = MockConfig(arms=[arm])

    async def run() -> None:
        server = MockServer(config)
        port = await server.start(args.port)
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        print(json.dumps({"arms": [asdict(a) for a in config.arms], "routes": config.routes}), flush=True)
        await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
