"""Per-request client-side metrics of a load test and their statistics (spec: loadtests/METRICS.md).

Pure code. A `RequestRecord` is one line of requests.jsonl; its timings and token counts are
measured by `corral.common.openai_http` (the SSE reading shared with the quality gate and the
benchmarks) and copied in by `loadtests.client`.
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
