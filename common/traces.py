"""The one reader of request traces, and the one way to thin them.

A trace is a CSV (optionally gzipped) with the Azure LLM inference trace's columns
`TIMESTAMP, ContextTokens, GeneratedTokens`. corral ships the Azure conversation trace
(`DEFAULT_TRACE`, CC-BY 4.0, see `common/data/README.md`). The autoscaler simulator and the
load generator both read traces here, and both thin them with `keep_mask`, so one seed keeps
the same requests in a simulation and in a live replay.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

DEFAULT_TRACE = Path(__file__).resolve().parent / "data" / "azure_llm_conv_2023.csv.gz"
"""The Azure LLM inference trace 2023, conversation service (19,366 requests, one hour)."""

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class TraceRow:
    """One recorded request."""

    t_s: float
    """Seconds after the trace's first request."""
    context_tokens: int
    """Prompt length, tokens."""
    generated_tokens: int
    """Answer length, tokens."""


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), newline="")
    return path.open(newline="")


def read_trace(path: str | Path = DEFAULT_TRACE) -> list[TraceRow]:
    """Read a trace CSV (or .csv.gz) into rows sorted by time, the first at t_s = 0.
    A missing column or an unreadable row raises ValueError naming the file and line."""
    p = Path(path)
    stamped: list[tuple[datetime, int, int]] = []
    with _open_text(p) as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{p}: trace lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            try:
                # Azure writes 7 fractional digits; datetime takes at most 6.
                stamp = datetime.fromisoformat(row["TIMESTAMP"].strip()[:26])
                ctx, gen = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{p}:{line_no}: bad trace row {row}: {exc}") from None
            stamped.append((stamp, ctx, gen))
    if not stamped:
        return []
    t0 = min(s for s, _, _ in stamped)
    rows = [TraceRow((s - t0).total_seconds(), c, g) for s, c, g in stamped]
    rows.sort(key=lambda r: r.t_s)  # stable: rows recorded at one instant keep their order
    return rows


def keep_mask(n: int, keep: float, seed: int = 0) -> list[bool]:
    """Which of a trace's `n` rows a thinning to share `keep` keeps: row i is kept when the
    i-th draw of `random.Random(seed)` is below `keep`. Decided over the whole trace, so a
    slice of it (a start time, a duration, a request cap) keeps the same rows as the whole."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep} must lie in (0, 1]")
    if keep == 1:
        return [True] * n
    rng = random.Random(seed)
    return [rng.random() < keep for _ in range(n)]


def thin(rows: Sequence[TraceRow], keep: float, seed: int = 0) -> list[TraceRow]:
    """The rows `keep_mask` keeps, in order."""
    return [r for r, k in zip(rows, keep_mask(len(rows), keep, seed)) if k]


def scale_tokens(tokens: int, token_scale: float, minimum: int = 1) -> int:
    """A length shrunk by `token_scale` (0 < token_scale <= 1), rounded, at least `minimum`."""
    if not 0 < token_scale <= 1:
        raise ValueError(f"token_scale={token_scale} must lie in (0, 1]")
    return max(minimum, round(tokens * token_scale))
