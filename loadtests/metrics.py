"""Per-request client-side metrics of an OpenAI streaming response (spec: loadtests/METRICS.md).

Pure code: the caller feeds the bytes it receives with the time it received them, so the same
meter serves the locust user, the tests and any other HTTP client. Token counts come from the
server's `usage` block (requested with `stream_options: {include_usage: true}`), never from
counting chunks, because one SSE event may carry several tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.common.stats import percentile


@dataclass
class RequestRecord:
    """One measured request: a line of requests.jsonl. Times in seconds."""

    request_id: int
    """Sequence number within the run."""
    stage: str = "main"
    """Which part of the run sent it (`main`, or `rate=2.0` in a sweep)."""
    phase: str = "measure"
    """`warmup` requests are recorded but excluded from every summary."""
    scheduled_s: float | None = None
    """When the arrival process wanted it sent, relative to the stage start (None in closed loop)."""
    sent_s: float = 0.0
    """When it was actually sent, relative to the stage start."""
    lag_s: float | None = None
    """sent_s - scheduled_s: how far the generator fell behind its schedule (open loop only)."""
    ttft_s: float | None = None
    """Send to the first event carrying generated text."""
    e2e_s: float | None = None
    """Send to the end of the response stream."""
    itl_s: list[float] = field(default_factory=list)
    """Gaps between consecutive events carrying generated text."""
    tpot_s: float | None = None
    """(e2e_s - ttft_s) / (output_tokens - 1): mean time per output token after the first."""
    input_tokens: int | None = None
    """Prompt tokens, from the server's usage."""
    output_tokens: int | None = None
    """Generated tokens, from the server's usage."""
    target_input_tokens: int | None = None
    """Prompt length the arrival process asked for (trace replay), if any."""
    target_output_tokens: int | None = None
    """Output length the arrival process asked for, if any."""
    content_events: int = 0
    """SSE events that carried generated text."""
    model: str | None = None
    """The `model` field of the response (the arm when a route splits traffic)."""
    arm: str | None = None
    """The arm that served it: `x-corral-arm` header, else the response's model field."""
    status: int | None = None
    """HTTP status code (None when the connection failed)."""
    error: str | None = None
    """Why the request failed; None when it succeeded."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> str:
        data = asdict(self)
        data["ok"] = self.ok
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class StreamMeter:
    """Turns the bytes of one SSE response, with their arrival times, into a RequestRecord.

    Usage: `meter = StreamMeter(record, sent_at)`, then `meter.feed(chunk, now)` for each piece
    received, then `meter.finish(now)`. `sent_at` and `now` come from the same monotonic clock.
    """

    def __init__(self, record: RequestRecord, sent_at: float):
        self.record = record
        self.sent_at = sent_at
        self._buffer = b""
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._usage: dict[str, Any] | None = None
        self._done = False

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
            self.record.error = f"server error event: {json.dumps(event['error'])[:300]}"
            return
        if event.get("model"):
            self.record.model = event["model"]
        if event.get("usage"):
            self._usage = event["usage"]
        if any(_choice_text(c) for c in event.get("choices") or []):
            if self._first_at is None:
                self._first_at = now
            else:
                self.record.itl_s.append(now - self._last_at)
            self._last_at = now
            self.record.content_events += 1

    def finish(self, now: float) -> RequestRecord:
        r = self.record
        if self._buffer.strip():
            self._line(self._buffer.strip(), now)
            self._buffer = b""
        r.e2e_s = now - self.sent_at
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
            elif self._usage is None:
                r.error = "no usage in the stream (server ignored stream_options.include_usage)"
            elif r.ttft_s is None:
                r.error = "no generated text in the stream"
        if r.error is None and r.output_tokens and r.output_tokens > 1:
            r.tpot_s = (r.e2e_s - r.ttft_s) / (r.output_tokens - 1)
        return r


def _choice_text(choice: dict[str, Any]) -> str:
    """Generated text of one streamed choice: completions `text` or chat `delta.content`."""
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


# ---------------------------------------------------------------------------- statistics


def describe(values: list[float], percentiles: tuple[int, ...] = (50, 90, 95, 99)) -> dict[str, float | None]:
    """count, mean, min, max and percentiles (`corral.common.stats`, type 7) of a sample."""
    out: dict[str, float | None] = {
        "count": len(values),
        "mean": sum(values) / len(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }
    for q in percentiles:
        out[f"p{q}"] = percentile(values, q)
    return out


def realised_rate(measured: list[RequestRecord], duration_s: float) -> float | None:
    """A stage's realised rate: the requests it sent in its measured window (warm-up excluded,
    failures included) / that window, in requests/s. None for a stage with no window."""
    return len(measured) / duration_s if duration_s > 0 else None
