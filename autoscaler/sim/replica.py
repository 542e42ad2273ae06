"""The replica model: a vLLM-like continuous-batching engine driven by a latency-vs-batch curve.

Up to `max_num_seqs` sequences decode together; one decode step emits a token for each and
takes `curve.itl(batch)` seconds. Admitting a sequence runs its prefill
(`curve.prefill(context_tokens)`), during which the replica's decoding pauses (vLLM without
chunked prefill; chunked prefill spreads the same cost). Requests beyond `max_num_seqs` wait in
the engine, FIFO. KV cache limits are not modelled.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CURVES_DIR = Path(__file__).resolve().parent.parent / "curves"


@dataclass(frozen=True)
class LatencyCurve:
    """Per-replica latency vs batch size (decode step) plus prefill cost per prompt token."""

    batch: tuple[int, ...]
    """Batch sizes measured (ascending)."""
    itl_s: tuple[float, ...]
    """Decode step latency at each batch size, seconds (= inter-token latency)."""
    prefill_s_per_token: float = 0.0002
    """Prefill time per prompt token, seconds."""
    prefill_base_s: float = 0.01
    """Fixed prefill overhead per request, seconds."""
    name: str = "curve"
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.batch) != len(self.itl_s) or len(self.batch) < 2:
            raise ValueError(f"batch ({len(self.batch)} points) and itl_s ({len(self.itl_s)}) must match, >= 2 points")
        if list(self.batch) != sorted(self.batch) or min(self.itl_s) <= 0:
            raise ValueError(f"batch must ascend and itl_s be > 0; got batch={self.batch} itl_s={self.itl_s}")

    @classmethod
    def load(cls, path: str | Path) -> LatencyCurve:
        data = json.loads(Path(path).read_text())
        return cls(batch=tuple(data["batch"]), itl_s=tuple(data["itl_s"]),
                   prefill_s_per_token=data.get("prefill_s_per_token", 0.0002),
                   prefill_base_s=data.get("prefill_base_s", 0.01),
                   name=data.get("name", Path(path).stem), source=data.get("source", ""))

    @classmethod
    def default(cls) -> LatencyCurve:
        return cls.load(CURVES_DIR / "default.json")

    def itl(self, batch: int) -> float:
        # Linear between points; beyond the last point, extrapolate the last slope.
        b = max(batch, 1)
        if b <= self.batch[-1]:
            return float(np.interp(b, self.batch, self.itl_s))
        slope = (self.itl_s[-1] - self.itl_s[-2]) / (self.batch[-1] - self.batch[-2])
        return self.itl_s[-1] + slope * (b - self.batch[-1])

    def prefill(self, tokens: int) -> float:
        return self.prefill_base_s + self.prefill_s_per_token * tokens

    def knee(self) -> int:
        """Batch at the knee of latency vs batch: the one maximising throughput / latency
        (b / itl(b)^2), i.e. where more batch starts costing more latency than it earns."""
        return max(range(1, self.batch[-1] + 1), key=lambda b: b / self.itl(b) ** 2)


@dataclass
class Seq:
    """A sequence in a replica's running batch."""

    req: int
    done_at_v: float
    """Replica virtual token clock at which its last token is out."""
    first_token_s: float


@dataclass
class Replica:
    """One simulated replica. Counts toward replica-seconds from `asked_s`, serves from `ready_s`."""

    rid: int
    asked_s: float
    ready_s: float
    running: list[Seq] = field(default_factory=list)
    waiting: deque = field(default_factory=deque)  # request indices admitted, not yet batched
    v: float = 0.0  # tokens emitted per running sequence so far
    last_s: float = 0.0
    stall_until_s: float = 0.0  # prefill in progress until then: no decoding
    draining: bool = False
    stopped_s: float | None = None

    def ongoing(self) -> int:
        return len(self.running) + len(self.waiting)

    def advance(self, t: float, curve: LatencyCurve) -> None:
        start = max(self.last_s, self.stall_until_s)
        if self.running and t > start:
            self.v += (t - start) / curve.itl(len(self.running))
        self.last_s = max(self.last_s, t)

    def next_event_s(self, curve: LatencyCurve) -> float:
        if not self.running:
            return math.inf
        start = max(self.last_s, self.stall_until_s)
        left = min(s.done_at_v for s in self.running) - self.v
        return start + max(0.0, left) * curve.itl(len(self.running))
