"""The replica model: a vLLM-like continuous-batching engine whose step times come from the one
engine model (`corral.common.engine_model`, shared with the capacity planner and the mock server).

Up to `max_num_seqs` sequences decode together; one decode step emits a token for each and
takes `curve.itl(batch)` seconds (the model's decode step). Admitting a sequence runs its
prefill (`curve.prefill(context_tokens)`, the model's step over that prompt), during which the
replica's decoding pauses (the simulator's run loop does not split prompts into chunks as vLLM's
scheduler does: `corral.common.engine_model.Engine` does, for the planner and the mock).
Requests beyond `max_num_seqs` wait in the engine, FIFO. KV cache limits are not modelled.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from corral.common.engine_model import EngineModel, IterationRecord, StepModel, fit_step_model

CURVES_DIR = Path(__file__).resolve().parent.parent / "curves"


@dataclass(frozen=True)
class LatencyCurve:
    """A replica's engine as the simulator reads it: the one engine model
    (`corral.common.engine_model.EngineModel`), from a curve file.

    A file written by `corral plan capacity` carries the fitted model (`engine_model`); an older
    or hand-written one gives decode step times per batch (`batch`, `itl_s`) and a prefill cost
    (`prefill_s_per_token`), from which the model's decode and prefill terms are fitted
    (non-negative least squares, `fit_step_model`). Either way every time the simulator uses
    comes from the model: a decode step of `b` sequences is `step_s(b, 0, b x context_tokens)`,
    a prefill of `n` tokens the step that computes them, `step_s(0, n, n)`."""

    batch: tuple[int, ...]
    """Batch sizes of the step-time table (ascending; for reading, and for fitting without `engine`)."""
    itl_s: tuple[float, ...]
    """Decode step latency at each batch size, seconds (= inter-token latency)."""
    prefill_s_per_token: float = 0.0002
    """Prefill time per prompt token, seconds (used when the file has no engine model)."""
    prefill_base_s: float = 0.01
    """Kept for old files; the model's prefill step costs its own base time instead."""
    name: str = "curve"
    source: str = ""
    engine: EngineModel | None = None
    """The engine model; fitted from the table when the file has none."""
    context_tokens: float = 0.0
    """Mean context per decoding sequence, tokens (the model's kv term)."""

    def __post_init__(self) -> None:
        if len(self.batch) != len(self.itl_s) or len(self.batch) < 2:
            raise ValueError(f"batch ({len(self.batch)} points) and itl_s ({len(self.itl_s)}) must match, >= 2 points")
        if list(self.batch) != sorted(self.batch) or min(self.itl_s) <= 0:
            raise ValueError(f"batch must ascend and itl_s be > 0; got batch={self.batch} itl_s={self.itl_s}")
        if self.engine is None:
            fit = fit_step_model([IterationRecord(b, 0, t) for b, t in zip(self.batch, self.itl_s)])
            step = StepModel(fit.model.base_s, fit.model.per_decode_seq_s, self.prefill_s_per_token)
            object.__setattr__(self, "engine", EngineModel(step))

    @property
    def step(self) -> StepModel:
        assert self.engine is not None  # set in __post_init__
        return self.engine.step

    @classmethod
    def load(cls, path: str | Path) -> LatencyCurve:
        data = json.loads(Path(path).read_text())
        engine = EngineModel.from_dict(data["engine_model"]) if data.get("engine_model") else None
        return cls(batch=tuple(data["batch"]), itl_s=tuple(data["itl_s"]),
                   prefill_s_per_token=data.get("prefill_s_per_token", 0.0002),
                   prefill_base_s=data.get("prefill_base_s", 0.01),
                   name=data.get("name", Path(path).stem), source=data.get("source", ""), engine=engine,
                   context_tokens=float(data.get("context_tokens", 0.0)))

    @classmethod
    def default(cls) -> LatencyCurve:
        return cls.load(CURVES_DIR / "default.json")

    def itl(self, batch: int) -> float:
        """One decode step of `batch` sequences (the model's step time)."""
        b = max(batch, 1)
        return self.step.step_s(b, 0, round(b * self.context_tokens))

    def prefill(self, tokens: int) -> float:
        """The step that computes a `tokens`-token prompt (the model's step time)."""
        return self.step.step_s(0, tokens, tokens)

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
    prefills: int = 0  # requests admitted to the batch so far (their prefill run)
    prompt_tokens: int = 0  # prompt tokens prefilled so far
    output_tokens: float = 0.0  # tokens decoded so far, over all running sequences

    def ongoing(self) -> int:
        return len(self.running) + len(self.waiting)

    def advance(self, t: float, curve: LatencyCurve) -> None:
        start = max(self.last_s, self.stall_until_s)
        if self.running and t > start:
            dv = (t - start) / curve.itl(len(self.running))
            self.v += dv
            self.output_tokens += dv * len(self.running)
        self.last_s = max(self.last_s, t)

    def next_event_s(self, curve: LatencyCurve) -> float:
        if not self.running:
            return math.inf
        start = max(self.last_s, self.stall_until_s)
        left = min(s.done_at_v for s in self.running) - self.v
        return start + max(0.0, left) * curve.itl(len(self.running))
