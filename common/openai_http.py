"""corral's one client of the OpenAI-compatible HTTP API: one request in, one measured `Reply` out.

Used by the rollout quality gate (golden set), the load generator and the benchmarks. A reply
carries the HTTP status, the arm that served it (`x-corral-arm`, else the body's `model`), the
generated text, the token usage and, for a streamed request, client-side timings: time to first
token, the gaps between content events and end-to-end time (definitions: loadtests/METRICS.md).

The reading of a response — SSE events or a JSON body — is one piece of pure code
(`SseMeter`, `json_reply`), fed with bytes and the times they arrived. It sits behind two
transports, and there are two on purpose:

* `post`, synchronous over a `requests.Session`: the quality gate, plain scripts, and the load
  generator's locust users, where gevent makes `requests` cooperative (gevent must patch the
  process before anything imports `ssl`/`socket`, so asyncio code cannot run beside it);
* `apost`, asyncio over an `aiohttp.ClientSession`: benchmarks that hold many streams open from
  one ungeventised process (`aiohttp` is imported only there; it comes with the `loadtest` extra).

Neither raises for HTTP or connection failures: they become `Reply.error`, so a failing server
shows up in results instead of killing the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    import aiohttp

ARM_HEADER = "x-corral-arm"
"""Response header naming the arm that served a request (set by corral's ingress)."""


def endpoint_path(chat: bool) -> str:
    return "/v1/chat/completions" if chat else "/v1/completions"


def headers(api_key: str | None) -> dict[str, str]:
    """Request headers: `Authorization: Bearer <api_key>` when a key is given (none when auth is off)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class Reply:
    """One response, read to its end. Times in seconds on the caller's clock."""

    status: int | None = None
    """HTTP status (None when the connection failed)."""
    arm: str | None = None
    """`x-corral-arm` header, else the response's `model` field."""
    model: str | None = None
    """The response's `model` field."""
    text: str = ""
    """Generated text (`text` of completions, `content` of chat messages or deltas)."""
    ttft_s: float | None = None
    """Streamed: send to the first event carrying generated text."""
    e2e_s: float | None = None
    """Send to the end of the response."""
    itl_s: list[float] = field(default_factory=list)
    """Streamed: gaps between consecutive events carrying generated text."""
    content_events: int = 0
    """Streamed: SSE events that carried generated text."""
    input_tokens: int | None = None
    """`usage.prompt_tokens`."""
    output_tokens: int | None = None
    """`usage.completion_tokens`."""
    error: str | None = None
    """Why the request failed; None when it succeeded."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        """(e2e_s - ttft_s) / (output_tokens - 1): mean time per output token after the first."""
        tokens = self.output_tokens or 0
        if self.error is None and self.ttft_s is not None and self.e2e_s is not None and tokens > 1:
            return (self.e2e_s - self.ttft_s) / (tokens - 1)
        return None


class SseMeter:
    """Turns the bytes of one SSE response, with their arrival times, into a `Reply`.

    `meter = SseMeter(sent_at)`, then `meter.feed(chunk, now)` for each piece received, then
    `meter.finish(now)`. `sent_at` and `now` come from the same monotonic clock. Token counts
    come from the server's `usage` block (`stream_options: {include_usage: true}`), never from
    counting events, because one event may carry several tokens. With `require_usage` a stream
    without it is a failure.
    """

    def __init__(self, sent_at: float, reply: Reply | None = None, require_usage: bool = True):
        self.sent_at = sent_at
        self.reply = reply if reply is not None else Reply()
        self.require_usage = require_usage
        self._buffer = b""
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._usage: dict[str, Any] | None = None
        self._done = False
        self._text: list[str] = []

    def feed(self, data: bytes, now: float) -> None:
        self._buffer += data
        # SSE events end with a blank line; lines may be split across network reads.
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._line(line.strip(), now)

    def _line(self, line: bytes, now: float) -> None:
        if not line.startswith(b"data:"):
            return  # blank separators, comments (": ping") and other SSE fields
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            event = json.loads(payload)
        except ValueError:
            raise ValueError(f"malformed SSE data line: {payload[:200]!r}") from None
        if "error" in event and "choices" not in event:
            self.reply.error = f"server error event: {json.dumps(event['error'])[:300]}"
            return
        if event.get("model"):
            self.reply.model = event["model"]
        if event.get("usage"):
            self._usage = event["usage"]
        generated = False
        for choice in event.get("choices") or []:
            text, reasoning = _choice_text(choice)
            self._text.append(text)
            generated = generated or bool(text or reasoning)
        if generated:
            if self._first_at is None:
                self._first_at = now
            elif self._last_at is not None:
                self.reply.itl_s.append(now - self._last_at)
            self._last_at = now
            self.reply.content_events += 1

    def finish(self, now: float) -> Reply:
        r = self.reply
        if self._buffer.strip():
            self._line(self._buffer.strip(), now)
            self._buffer = b""
        r.e2e_s = now - self.sent_at
        r.text = "".join(self._text)
        if self._first_at is not None:
            r.ttft_s = self._first_at - self.sent_at
        if self._usage:
            r.input_tokens = self._usage.get("prompt_tokens")
            r.output_tokens = self._usage.get("completion_tokens")
        if r.arm is None:
            r.arm = r.model
        if r.error is None:
            if not self._done:
                r.error = "stream ended without [DONE]"
            elif self._usage is None and self.require_usage:
                r.error = "no usage in the stream (server ignored stream_options.include_usage)"
            elif r.ttft_s is None:
                r.error = "no generated text in the stream"
        return r


def json_reply(body: bytes, reply: Reply) -> Reply:
    """Fill `reply` from a non-streamed JSON response body (chat or completions)."""
    try:
        data = json.loads(body)
        choice = (data.get("choices") or [{}])[0]
        reply.text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        usage = data.get("usage") or {}
        reply.model = data.get("model")
    except (ValueError, AttributeError, IndexError) as exc:
        reply.error = f"malformed JSON response ({exc}): {body[:200]!r}"
        return reply
    reply.input_tokens, reply.output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if reply.arm is None:
        reply.arm = reply.model
    return reply


def _choice_text(choice: dict[str, Any]) -> tuple[str, str]:
    """(answer text, reasoning text) of one streamed choice: completions `text` or chat `delta`."""
    if "text" in choice:
        return choice.get("text") or "", ""
    delta = choice.get("delta") or {}
    return delta.get("content") or "", delta.get("reasoning_content") or ""


def _http_error(status: int, body: bytes | str) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return f"HTTP {status}: {text[:300]}"


def post(session: requests.Session, base_url: str, body: dict[str, Any], *, api_key: str | None = None,
         timeout_s: float = 120.0, require_usage: bool = True, reply: Reply | None = None,
         clock: Callable[[], float] = time.perf_counter) -> Reply:
    """POST `body` to the chat or completions endpoint (chosen by `messages` in the body) and read
    the response to its end: as SSE when `body["stream"]`, else as JSON. `sent_at` is taken just
    before the request goes out; `timeout_s` bounds the whole request, stream included.
    `reply` may carry fields the caller set; it is filled and returned."""
    url = base_url.rstrip("/") + endpoint_path("messages" in body)
    reply = reply if reply is not None else Reply()
    stream = bool(body.get("stream"))
    sent_at = clock()
    try:
        with session.post(url, json=body, headers=headers(api_key), stream=stream, timeout=timeout_s) as resp:
            reply.status = resp.status_code
            reply.arm = resp.headers.get(ARM_HEADER)
            if resp.status_code != 200:
                reply.error = _http_error(resp.status_code, resp.content)
                reply.e2e_s = clock() - sent_at
                return reply
            if not stream:
                content = resp.content
                reply.e2e_s = clock() - sent_at
                return json_reply(content, reply)
            meter = SseMeter(sent_at, reply, require_usage)
            # chunk_size=None yields each chunk of a chunked response as it arrives.
            for chunk in resp.iter_content(chunk_size=None):
                meter.feed(chunk, clock())
                if clock() - sent_at > timeout_s:
                    reply.error = f"stream exceeded timeout_s={timeout_s:g}"
                    break
        return meter.finish(clock())
    except (requests.RequestException, ValueError) as exc:
        reply.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        reply.e2e_s = clock() - sent_at
        return reply


async def apost(session: aiohttp.ClientSession, base_url: str, body: dict[str, Any], *, api_key: str | None = None,
                require_usage: bool = True, clock: Callable[[], float] = time.perf_counter) -> Reply:
    """`post` over aiohttp, for asyncio callers; the session's own timeout bounds the request."""
    import aiohttp

    url = base_url.rstrip("/") + endpoint_path("messages" in body)
    reply = Reply()
    stream = bool(body.get("stream"))
    sent_at = clock()
    try:
        async with session.post(url, json=body, headers=headers(api_key)) as resp:
            reply.status = resp.status
            reply.arm = resp.headers.get(ARM_HEADER)
            if resp.status != 200:
                reply.error = _http_error(resp.status, await resp.read())
                reply.e2e_s = clock() - sent_at
                return reply
            if not stream:
                content = await resp.read()
                reply.e2e_s = clock() - sent_at
                return json_reply(content, reply)
            meter = SseMeter(sent_at, reply, require_usage)
            async for chunk in resp.content.iter_any():
                meter.feed(chunk, clock())
        return meter.finish(clock())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        reply.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        reply.e2e_s = clock() - sent_at
        return reply
