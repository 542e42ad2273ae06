"""The one engine model: an iteration-level model of a vLLM replica and a scheduler replay.

Used by the capacity planner (`loadtests.capacity`), the mock server (`loadtests.mockserver`)
and the autoscaler simulator (`autoscaler.sim.replica`). Pure: no I/O, no clock.

**Step time.** One engine iteration (a forward pass over the scheduled batch) takes

    t = base_s + per_decode_seq_s * decode_seqs + per_prefill_token_s * prefill_tokens
        + per_kv_token_s * kv_tokens

seconds: `decode_seqs` sequences each computing one token, `prefill_tokens` prompt tokens
computed in this step (chunks of one or more prompts), `kv_tokens` the context the scheduled
sequences attend to. The coefficients are fitted by non-negative least squares
(`fit_step_model`) from per-iteration records, the engine's own (vLLM's
`SchedulerIterationDetails`: ctx/generation requests and tokens and the step's elapsed ms,
`vllm/v1/metrics/stats.py` class `SchedulerIterationDetails`, filled in
`vllm/v1/engine/core.py` `EngineCore.capture_iteration_details` when
`enable_logging_iteration_details` is set) or reconstructed from client timings. This is the
grain of Vidur's execution-time predictor (microsoft/vidur), linear instead of learned: on a
CPU engine the cost of a step is close to linear in its tokens.

**Host overhead.** `host_overhead_s` is the time a request spends outside the engine before
its first token reaches the client (HTTP, Serve's proxy and router, detokenisation): client
TTFT minus the engine's queued + prefill time. The replay adds it to every request's arrival.

**Scheduler replay** (`Engine`, `replay`). vLLM 0.32's v1 scheduler
(`vllm/v1/core/sched/scheduler.py`, `Scheduler.schedule`): each step first serves the running
requests in admission order (the `while req_index < len(self.running) and token_budget > 0`
loop: a decoding request takes one token, a request still prefilling takes the next chunk of
its prompt, capped by what is left of `max_num_batched_tokens`), then admits waiting requests
first come first served while fewer than `max_num_seqs` run and budget is left (a prompt
longer than the budget is prefilled in chunks over several steps: chunked prefill). A request's
first token comes out at the end of the step that computes its last prompt token; each later
step gives it one more. KV-cache capacity (preemption) is not modelled.
Across replicas, Ray Serve's router sends a request to the least-loaded replica with fewer
than `max_ongoing_requests` in flight, else it waits at the handle, first come first served
(Serve's router samples two replicas, `ray/serve/_private/request_router/pow_2_router.py`;
least-loaded is the idealised form, as in the autoscaler simulator).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

# vLLM 0.32's default token budget per step on CPU for the OpenAI server:
# `vllm/engine/arg_utils.py` EngineArgs.get_batch_defaults, `current_platform.is_cpu()` branch
# (2048 * world_size for UsageContext.OPENAI_API_SERVER).
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048

COEFFICIENTS = ("base_s", "per_decode_seq_s", "per_prefill_token_s", "per_kv_token_s")


@dataclass(frozen=True)
class StepModel:
    """Seconds per engine iteration as a linear function of the batch's composition."""

    base_s: float
    """Fixed cost of one iteration, seconds."""
    per_decode_seq_s: float = 0.0
    """Per sequence decoding one token in the step, seconds."""
    per_prefill_token_s: float = 0.0
    """Per prompt token computed in the step, seconds."""
    per_kv_token_s: float = 0.0
    """Per context token attended to by the scheduled sequences, seconds."""

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"StepModel.{name}={value} must be finite and >= 0")

    def step_s(self, decode_seqs: float, prefill_tokens: float = 0, kv_tokens: float = 0) -> float:
        return (self.base_s + self.per_decode_seq_s * decode_seqs + self.per_prefill_token_s * prefill_tokens
                + self.per_kv_token_s * kv_tokens)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in COEFFICIENTS}


@dataclass(frozen=True)
class EngineModel:
    """The step model plus the per-request host/ingress overhead."""

    step: StepModel
    host_overhead_s: float = 0.0
    """Seconds each request spends outside the engine before its first token reaches the client."""

    def __post_init__(self) -> None:
        if not (self.host_overhead_s >= 0 and math.isfinite(self.host_overhead_s)):
            raise ValueError(f"EngineModel.host_overhead_s={self.host_overhead_s} must be finite and >= 0")

    def as_dict(self) -> dict[str, float]:
        return {**self.step.as_dict(), "host_overhead_s": self.host_overhead_s}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> EngineModel:
        return cls(StepModel(**{k: float(data[k]) for k in COEFFICIENTS if k in data}),
                   float(data.get("host_overhead_s", 0.0)))


@dataclass(frozen=True)
class IterationRecord:
    """One engine iteration: what it computed and how long it took."""

    decode_seqs: int
    prefill_tokens: int
    step_s: float
    kv_tokens: int | None = None
    """None where the source does not say (vLLM's iteration details do not)."""


def iteration_record(details: dict[str, float]) -> IterationRecord | None:
    """An `IterationRecord` from vLLM's `SchedulerIterationDetails` fields (as a dict): the
    generation requests decode one token each, the ctx tokens are prefill. None for dummy or
    empty iterations."""
    if details.get("is_dummy") or not details.get("elapsed_ms"):
        return None
    decode, prefill = int(details.get("num_generation_requests", 0)), int(details.get("num_ctx_tokens", 0))
    if decode + prefill == 0:
        return None
    return IterationRecord(decode, prefill, float(details["elapsed_ms"]) / 1000.0)


@dataclass(frozen=True)
class StepFit:
    """A fitted step model and how well it fits its records."""

    model: StepModel
    records: int
    rms_residual_s: float
    mean_step_s: float
    decode_seqs_max: int
    prefill_tokens_max: int


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares, exactly, for a few columns: the optimum is the unconstrained
    least-squares solution on its own support, so try every support and keep the best feasible one."""
    n = a.shape[1]
    best, best_err = np.zeros(n), float(np.sum(b ** 2))
    for k in range(1, n + 1):
        for support in itertools.combinations(range(n), k):
            cols = list(support)
            x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(x < 0):
                continue
            full = np.zeros(n)
            full[cols] = x
            err = float(np.sum((a @ full - b) ** 2))
            if err < best_err - 1e-15:
                best, best_err = full, err
    return best


def fit_step_model(records: Sequence[IterationRecord]) -> StepFit:
    """Non-negative least squares of step time on (1, decode seqs, prefill tokens, kv tokens).
    The kv term is fitted only when every record carries kv_tokens; a term whose column never
    varies from zero stays 0."""
    if len(records) < 2:
        raise ValueError(f"fitting the step model needs at least 2 iteration records, got {len(records)}")
    with_kv = all(r.kv_tokens is not None for r in records)
    rows = [[1.0, r.decode_seqs, r.prefill_tokens, (r.kv_tokens or 0) if with_kv else 0.0] for r in records]
    a = np.array(rows, dtype=float)
    b = np.array([r.step_s for r in records], dtype=float)
    # Scale columns so the support search is well conditioned (tokens are in the thousands).
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    x = nnls(a / scale, b) / scale
    x = np.where(np.abs(a).max(axis=0) > 0, x, 0.0)
    model = StepModel(*(float(v) for v in x))
    resid = a @ x - b
    return StepFit(model, len(records), float(np.sqrt(np.mean(resid ** 2))), float(b.mean()),
                   max(r.decode_seqs for r in records), max(r.prefill_tokens for r in records))


# ------------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Arrival:
    """A request of an arrival schedule."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class SchedulerLimits:
    """What bounds a replica's batch and the router's dispatch."""

    max_num_seqs: int
    """vLLM's max_num_seqs: requests running (prefilling or decoding) at once per replica."""
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    """vLLM's token budget per step (decodes and prefill chunks together)."""
    replicas: int = 1
    max_ongoing_requests: int | None = None
    """Serve's per-replica cap on requests in flight (None: no cap, requests go to the engine at once)."""

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "replicas"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerLimits.{name}={getattr(self, name)} must be >= 1")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ValueError(f"SchedulerLimits.max_ongoing_requests={self.max_ongoing_requests} must be >= 1")


@dataclass
class Timing:
    """What the client sees of one replayed request (seconds from its arrival)."""

    arrival_s: float
    ttft_s: float
    e2e_s: float
    itl_s: list[float]
    prompt_tokens: int
    output_tokens: int
    replica: int = 0

    @property
    def tpot_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


@dataclass
class _Seq:
    key: int
    prompt_tokens: int
    output_tokens: int
    computed: int = 0
    """Prompt tokens computed so far (== prompt_tokens once prefilled)."""
    emitted: int = 0
    token_times: list[float] = field(default_factory=list)

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_tokens


@dataclass(frozen=True)
class Step:
    """One scheduled iteration: its composition, duration and who gets a token at its end."""

    decode_seqs: int
    prefill_tokens: int
    kv_tokens: int
    duration_s: float
    chunks: tuple[tuple[int, int], ...]
    """(sequence key, tokens) computed in the step."""


class Engine:
    """One replica's vLLM scheduler, step by step: `submit` requests, `schedule` a step, and
    `finish` it (which hands out the step's tokens). The caller owns the clock."""

    def __init__(self, model: StepModel, max_num_seqs: int,
                 max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError(f"max_num_seqs ({max_num_seqs}) and max_num_batched_tokens "
                             f"({max_num_batched_tokens}) must be >= 1")
        self.model, self.max_num_seqs, self.max_num_batched_tokens = model, max_num_seqs, max_num_batched_tokens
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self.step: Step | None = None
        self.last_tokens: list[int] = []
        """Keys of the sequences that got a token at the end of the last finished step."""

    def submit(self, key: int, prompt_tokens: int, output_tokens: int) -> None:
        self.waiting.append(_Seq(key, max(1, prompt_tokens), max(1, output_tokens)))

    @property
    def ongoing(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def queued_prompt_tokens(self) -> int:
        """Prompt tokens not yet computed (waiting requests and unfinished prefills)."""
        return sum(s.prompt_tokens - s.computed for s in itertools.chain(self.waiting, self.running))

    def schedule(self) -> Step | None:
        """The next step (None when there is nothing to run). Running requests first, in admission
        order, then waiting ones while slots and token budget last."""
        budget = self.max_num_batched_tokens
        chunks: list[tuple[int, int]] = []
        decode = prefill = kv = 0
        for s in self.running:
            if budget <= 0:
                break
            if s.prefilling:
                n = min(s.prompt_tokens - s.computed, budget)
                prefill += n
                kv += s.computed + n
            else:
                n = 1
                decode += 1
                kv += s.prompt_tokens + s.emitted
            budget -= n
            chunks.append((s.key, n))
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            s = self.waiting.popleft()
            self.running.append(s)
            n = min(s.prompt_tokens, budget)
            prefill += n
            kv += n
            budget -= n
            chunks.append((s.key, n))
        if not chunks:
            self.step = None
            return None
        self.step = Step(decode, prefill, kv, self.model.step_s(decode, prefill, kv), tuple(chunks))
        return self.step

    def finish(self, now: float) -> list[_Seq]:
        """End the scheduled step at `now`: each sequence that completed its prompt or decoded
        gets a token; returns the sequences that are done (removed from the batch)."""
        if self.step is None:
            return []
        by_key = {s.key: s for s in self.running}
        self.last_tokens = []
        for key, n in self.step.chunks:
            s = by_key[key]
            if s.prefilling:
                s.computed += n
                if s.prefilling:
                    continue  # a chunk of a longer prompt: no token yet
            s.emitted += 1
            s.token_times.append(now)
            self.last_tokens.append(key)
        done = [s for s in self.running if s.emitted >= s.output_tokens]
        self.running = [s for s in self.running if s.emitted < s.output_tokens]
        self.step = None
        return done


def replay(schedule: Sequence[Arrival], model: EngineModel, limits: SchedulerLimits) -> list[Timing]:
    """Client-side timings of each request of `schedule` (in its order) served by `limits.replicas`
    replicas of the modelled engine behind Serve's router (module docstring)."""
    n = len(schedule)
    engines = [Engine(model.step, limits.max_num_seqs, limits.max_num_batched_tokens) for _ in range(limits.replicas)]
    cap = limits.max_ongoing_requests if limits.max_ongoing_requests is not None else math.inf
    order = sorted(range(n), key=lambda i: schedule[i].arrival_s)
    at_engine = [schedule[i].arrival_s + model.host_overhead_s for i in order]
    handle: deque[int] = deque()
    where = [0] * n
    out: list[Timing | None] = [None] * n
    steps: list[tuple[float, int]] = []  # (end time, replica) of steps in flight
    busy = [False] * len(engines)
    k = 0
    now = 0.0

    def dispatch() -> None:
        """Send what the handle holds to replicas, then start a step on every idle one (requests
        arriving at the same instant share the step)."""
        while handle:
            r = min(range(len(engines)), key=lambda j: (engines[j].ongoing, j))
            if engines[r].ongoing >= cap:
                break
            i = handle.popleft()
            where[i] = r
            a = schedule[i]
            engines[r].submit(i, a.prompt_tokens, a.output_tokens)
        for r in range(len(engines)):
            start(r)

    def start(r: int) -> None:
        if not busy[r]:
            step = engines[r].schedule()
            if step is not None:
                busy[r] = True
                heapq.heappush(steps, (now + step.duration_s, r))

    while k < n or steps or handle:
        t_arrival = at_engine[k] if k < n else math.inf
        t_step = steps[0][0] if steps else math.inf
        if t_arrival == math.inf and t_step == math.inf:
            raise RuntimeError("replay stalled with requests waiting at the handle")  # pragma: no cover
        if t_arrival <= t_step:
            now = t_arrival
            while k < n and at_engine[k] == now:
                handle.append(order[k])
                k += 1
            dispatch()
            continue
        now = steps[0][0]
        while steps and steps[0][0] == now:  # steps ending at the same instant, then dispatch
            _, r = heapq.heappop(steps)
            busy[r] = False
            for s in engines[r].finish(now):
                a = schedule[s.key]
                times = s.token_times
                out[s.key] = Timing(a.arrival_s, times[0] - a.arrival_s, times[-1] - a.arrival_s,
                                    [b - c for b, c in zip(times[1:], times[:-1])], s.prompt_tokens,
                                    s.output_tokens, where[s.key])
        dispatch()
    return [t for t in out if t is not None]


def poisson_schedule(rate_rps: float, duration_s: float, prompt_tokens: int, output_tokens: int,
                     seed: int = 0, count: int | None = None) -> list[Arrival]:
    """Poisson arrivals over [0, duration_s) holding exactly `count` (default round(rate x
    duration)) requests: uniform order statistics, i.e. a Poisson process conditioned on its count."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate_rps ({rate_rps}) and duration_s ({duration_s}) must be > 0")
    m = round(rate_rps * duration_s) if count is None else count
    times = np.sort(np.random.default_rng(seed).uniform(0.0, duration_s, m))
    return [Arrival(float(t), prompt_tokens, output_tokens) for t in times]


def rescale(schedule: Iterable[Arrival], time_factor: float = 1.0, prompt_factor: float = 1.0,
            output_factor: float = 1.0) -> list[Arrival]:
    """The same arrivals with times multiplied by `time_factor` (< 1 = denser) and lengths scaled."""
    return [Arrival(a.arrival_s * time_factor, max(1, round(a.prompt_tokens * prompt_factor)),
                    max(1, round(a.output_tokens * output_factor))) for a in schedule]


@dataclass(frozen=True)
class ClientRequest:
    """One request as the client measured it (seconds; `sent_s` on the load test's clock)."""

    sent_s: float
    ttft_s: float
    itl_s: tuple[float, ...]
    prompt_tokens: int
    output_tokens: int


def iterations_from_client(requests: Sequence[ClientRequest], max_readers: int | None = None) -> list[IterationRecord]:
    """Per-iteration records reconstructed from client timings, where the engine's own are not
    recorded. Every gap between two tokens of one request is one engine step (a step gives each
    decoding sequence one token); its composition is read off the other requests at the gap's
    midpoint: decoding ones (first token before it, last after) and their context, plus the
    prompts whose first token ended that gap (their prefill ran in it). Client-side jitter
    (streaming, the ingress) stays in the step times: the fit is an estimate of the engine's
    own records, no better than the timings it reads. `max_readers` reads the gaps of that many
    requests only (evenly spread), bounding the cost; the composition still counts every request."""
    if not requests:
        return []
    first = np.array([r.sent_s + r.ttft_s for r in requests])
    last = np.array([r.sent_s + r.ttft_s + sum(r.itl_s) for r in requests])
    prompt = np.array([r.prompt_tokens for r in requests], dtype=float)
    outs = np.array([r.output_tokens for r in requests], dtype=float)
    span = np.maximum(last - first, 1e-9)
    out: list[IterationRecord] = []
    stride = max(1, math.ceil(len(requests) / max_readers)) if max_readers else 1
    for r in requests[::stride]:
        gaps = np.array(r.itl_s, dtype=float)
        if gaps.size == 0:
            continue
        ends = r.sent_s + r.ttft_s + np.cumsum(gaps)
        starts = ends - gaps
        keep = gaps > 0
        gaps, starts, ends = gaps[keep], starts[keep], ends[keep]
        mids = (starts + ends) / 2
        # rows: gaps of this request; columns: all requests
        decoding = (first[None, :] <= mids[:, None]) & (last[None, :] > mids[:, None])
        # Tokens each decoding request had by the midpoint, ~ its share of its own decode time.
        done = np.clip((mids[:, None] - first[None, :]) / span[None, :], 0.0, 1.0)
        kv = np.sum(np.where(decoding, prompt[None, :] + 1 + done * (outs[None, :] - 1), 0.0), axis=1)
        arrived = (first[None, :] > starts[:, None]) & (first[None, :] <= ends[:, None])
        prefill = np.sum(np.where(arrived, prompt[None, :], 0.0), axis=1)
        out.extend(IterationRecord(int(d), int(p), float(g), int(k))
                   for d, p, g, k in zip(decoding.sum(axis=1), prefill, gaps, kv))
    return out
