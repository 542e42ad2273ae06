"""The replica model: a vLLM-like continuous-batching engine whose step times come from the one
engine model (`corral.common.engine_model`, shared with the capacity planner and the mock server).

Up to `max_num_seqs` sequences run together. Each step gives every decoding sequence one token
and spends what is left of the step's token budget (`max_num_batched_tokens`) on the prompts of
the sequences still prefilling, first admitted first, a long prompt in chunks over several
steps, as vLLM 0.32's scheduler does (`vllm/v1/core/sched/scheduler.py` `Scheduler.schedule`:
running requests first, then waiting ones while slots and budget last). A step of `d` decodes
and `c` prompt tokens takes the model's `step_s(d, c, ...)`: prefill slows the decoding
sequences' steps instead of stopping them, and a prompt's first token comes out when its last
prompt token is computed.

The clock is continuous, not step by step: between events (a sequence finishing, a prompt
finishing, an admission) the replica runs at a constant step time, its decoders advance a
token clock `v` at one token per step and its prompts are computed first-come first-served at
the step's chunk rate. This is the planner's step-by-step replay (`corral.common.engine_model.
Engine`) at a grain that simulates hours of traffic in seconds; it differs from it by less than
a step per request (a prompt that fits in a step with others finishes part-way through that
step here, at its end in vLLM). Requests beyond `max_num_seqs` wait in the engine, FIFO. KV
cache limits are not modelled.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from corral.common.engine_model import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    EngineModel,
    IterationRecord,
    StepModel,
    fit_step_model,
)

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
        """The step that computes a `tokens`-token prompt alone (the model's step time)."""
        return self.step.step_s(0, tokens, tokens)

    def mixed_step(self, decode_seqs: int, prompt_tokens: float) -> float:
        """One step of `decode_seqs` decodes and `prompt_tokens` prompt tokens (the model's step
        time; the prompt tokens attend to themselves, as in `prefill`)."""
        return self.step.step_s(decode_seqs, prompt_tokens, decode_seqs * self.context_tokens + prompt_tokens)

    def knee(self) -> int:
        """Batch at the knee of latency vs batch: the one maximising throughput / latency
        (b / itl(b)^2), i.e. where more batch starts costing more latency than it earns."""
        return max(range(1, self.batch[-1] + 1), key=lambda b: b / self.itl(b) ** 2)


@dataclass
class Seq:
    """A sequence in a replica's running batch: prefilling (`prompt_left > 0`), then decoding."""

    req: int
    generated_tokens: int
    prompt_left: float
    """Prompt tokens not computed yet."""
    done_at_v: float = math.inf
    """Replica token clock at which its last token is out (set when its first token is)."""
    first_token_s: float = math.inf


@dataclass
class Replica:
    """One simulated replica. Counts toward replica-seconds from `asked_s`, serves from `ready_s`."""

    rid: int
    asked_s: float
    ready_s: float
    token_budget: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    """vLLM's max_num_batched_tokens: decodes and prompt chunks per step."""
    running: list[Seq] = field(default_factory=list)
    waiting: deque = field(default_factory=deque)  # request indices admitted, not yet batched
    v: float = 0.0  # tokens emitted per decoding sequence so far
    last_s: float = 0.0
    draining: bool = False
    stopped_s: float | None = None
    prefills: int = 0  # requests admitted to the batch so far (their prefill run)
    prompt_tokens: float = 0.0  # prompt tokens computed so far
    output_tokens: float = 0.0  # tokens decoded so far, over all decoding sequences

    def ongoing(self) -> int:
        return len(self.running) + len(self.waiting)

    def _step(self, curve: LatencyCurve) -> tuple[float, float, Seq | None, int]:
        """The current step: its time, its prompt tokens, the first prompt in line, decoders."""
        decoders, pending, head = 0, 0.0, None
        for s in self.running:  # one pass: this runs on every event
            if s.prompt_left > 0:
                pending += s.prompt_left
                head = head or s
            else:
                decoders += 1
        if head is None:
            return (curve.itl(decoders) if decoders else math.inf), 0.0, None, decoders
        chunk = min(max(self.token_budget - decoders, 1), pending)
        return curve.mixed_step(decoders, chunk), chunk, head, decoders

    def advance(self, t: float, curve: LatencyCurve) -> None:
        """Run the replica from `last_s` to `t`; prompts finishing on the way start decoding."""
        now = self.last_s
        while self.running and now <= t:
            step_s, chunk, head, decoders = self._step(curve)
            head_done_s = now + head.prompt_left * step_s / chunk if head is not None else math.inf
            until = min(t, head_done_s)
            steps = (until - now) / step_s if until > now else 0.0
            self.v += steps
            self.output_tokens += steps * decoders
            self.prompt_tokens += steps * chunk
            left = steps * chunk  # prompt tokens computed, first admitted first
            for s in self.running:
                if left <= 0:
                    break
                if s.prompt_left > 0:
                    used = min(left, s.prompt_left)
                    s.prompt_left -= used
                    left -= used
            if head is None or head_done_s > t:
                break
            head.prompt_left = 0.0  # its last prompt token is computed: first token out
            head.first_token_s = head_done_s
            head.done_at_v = self.v + head.generated_tokens - 1
            now = until
        self.last_s = max(self.last_s, t)

    def next_event_s(self, curve: LatencyCurve) -> float:
        """When the next sequence finishes or the next prompt gets its first token."""
        step_s, chunk, head, _ = self._step(curve)
        if step_s == math.inf:
            return math.inf
        out = self.last_s + head.prompt_left * step_s / chunk if head is not None else math.inf
        done = [s.done_at_v for s in self.running if s.prompt_left <= 0]
        if done:
            out = min(out, self.last_s + max(0.0, min(done) - self.v) * step_s)
        return out
