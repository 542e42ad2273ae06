"""What the simulator replays: requests (arrival time, prompt and answer lengths), from a trace."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from corral.common.traces import DEFAULT_TRACE, read_trace, scale_tokens, thin


@dataclass(frozen=True)
class Request:
    arrival_s: float
    context_tokens: int
    generated_tokens: int


def load_trace(path: str | Path = DEFAULT_TRACE, speedup: float = 1.0, limit_s: float | None = None,
               keep: float = 1.0, token_scale: float = 1.0, seed: int = 0) -> list[Request]:
    """A trace (`corral.common.traces.read_trace`) as requests from t=0. `speedup` compresses
    time (arrivals `speedup` times denser); `limit_s` cuts the compressed trace; `keep` keeps a
    seeded share of the requests and `token_scale` shrinks their lengths, with the same
    thinning as the live load test (`corral.common.traces.thin`: one seed, the same requests),
    so a trace can be fitted to a small model's measured curve."""
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    if not 0 < keep <= 1 or not 0 < token_scale <= 1:
        raise ValueError(f"keep ({keep}) and token_scale ({token_scale}) must lie in (0, 1]")
    rows = thin(read_trace(path), keep, seed)
    out = [Request(r.t_s / speedup, scale_tokens(r.context_tokens, token_scale),
                   scale_tokens(max(1, r.generated_tokens), token_scale)) for r in rows]
    if limit_s is not None:
        out = [r for r in out if r.arrival_s < limit_s]
    return out


def window(requests: list[Request], start_s: float, end_s: float | None = None) -> list[Request]:
    """The requests arriving in [start_s, end_s), moved so that start_s is t=0 (a slice of a
    trace, e.g. to choose settings on one part and judge them on another)."""
    return [replace(r, arrival_s=r.arrival_s - start_s) for r in requests
            if r.arrival_s >= start_s and (end_s is None or r.arrival_s < end_s)]
