"""The workload family: seeded, documented generators the autoscaler is judged on.

Every member is a name, its parameters and a function `seed -> list[Request]`. Arrival
processes and request lengths are separate:

* arrivals: the recorded Azure conversation trace; a two-state Markov-modulated Poisson
  process (MMPP: exponential sojourns in a low and a high state, the high rate `burst_ratio`
  times the low one); a flash crowd (a base Poisson rate that rises x5 within a minute, holds,
  then is gone at once); a slow diurnal ramp (a raised cosine from a trough to a peak and back);
* lengths: (prompt, answer) pairs drawn from the conversation trace and scaled, so the mixes
  keep the trace's joint distribution: `conversation` (both x`token_scale`), `prefill-heavy`
  (prompts x4, answers x1/4: long prompts, short answers), `decode-heavy` (prompts x1/4,
  answers x3). Prompts are capped (`max_context_tokens`) where a longer prefill alone would
  exceed the TTFT SLO on the measured curve.

The default scale (token_scale 0.05, a few requests per second) fits the measured SmolLM2
curve on one CPU core per replica (`autoscaler/curves/smollm2-135m-cpu1.json`): from a few
replicas to a few dozen. All randomness comes from `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from corral.autoscaler.sim.workload import Request, load_trace, window
from corral.common.traces import DEFAULT_TRACE, read_trace

TOKEN_SCALE = 0.05
"""Default factor on the trace's prompt and answer lengths (fits a 135M model on one CPU core)."""


@lru_cache(maxsize=1)
def _trace_lengths() -> tuple[np.ndarray, np.ndarray]:
    rows = read_trace(DEFAULT_TRACE)
    return (np.array([r.context_tokens for r in rows], dtype=float),
            np.array([max(1, r.generated_tokens) for r in rows], dtype=float))


@dataclass(frozen=True)
class Lengths:
    """Prompt and answer lengths: the trace's (prompt, answer) pairs, each scaled."""

    name: str = "conversation"
    context_scale: float = TOKEN_SCALE
    generated_scale: float = TOKEN_SCALE
    max_context_tokens: int = 300
    """Cap on a prompt (300 tokens: 1.3 s of prefill on the measured curve, under the 2 s TTFT SLO)."""

    def draw(self, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        ctx, gen = _trace_lengths()
        idx = rng.integers(0, len(ctx), size=n)
        c = np.clip(np.rint(ctx[idx] * self.context_scale), 1, self.max_context_tokens).astype(int)
        g = np.maximum(1, np.rint(gen[idx] * self.generated_scale)).astype(int)
        return list(zip(c.tolist(), g.tolist()))


CONVERSATION = Lengths()
PREFILL_HEAVY = Lengths("prefill-heavy", context_scale=TOKEN_SCALE * 4, generated_scale=TOKEN_SCALE / 4)
DECODE_HEAVY = Lengths("decode-heavy", context_scale=TOKEN_SCALE / 4, generated_scale=TOKEN_SCALE * 3)


# ---------------------------------------------------------------- arrival processes (times, seconds)


def poisson_times(rate: Callable[[float], float], peak_rps: float, duration_s: float,
                  rng: np.random.Generator) -> np.ndarray:
    """A non-homogeneous Poisson process with intensity `rate(t)` <= `peak_rps` on
    [0, duration_s), by thinning a homogeneous one (Lewis and Shedler)."""
    n = rng.poisson(peak_rps * duration_s)
    t = np.sort(rng.uniform(0, duration_s, size=n))
    accept = rng.uniform(0, peak_rps, size=n) < np.array([rate(x) for x in t])
    return t[accept]


def mmpp_times(mean_rps: float, burst_ratio: float, low_mean_s: float, high_mean_s: float, duration_s: float,
               rng: np.random.Generator) -> np.ndarray:
    """Two-state MMPP with exponential sojourns (means `low_mean_s`, `high_mean_s`), the high
    rate `burst_ratio` x the low one, scaled so the long-run mean rate is `mean_rps`. Starts low."""
    low = mean_rps * (low_mean_s + high_mean_s) / (low_mean_s + burst_ratio * high_mean_s)
    out, t, high = [], 0.0, False
    while t < duration_s:
        stay = rng.exponential(high_mean_s if high else low_mean_s)
        end = min(t + stay, duration_s)
        rate = low * (burst_ratio if high else 1.0)
        k = rng.poisson(rate * (end - t))
        out.append(rng.uniform(t, end, size=k))
        t, high = end, not high
    return np.sort(np.concatenate(out)) if out else np.zeros(0)


def flash_crowd_rate(base_rps: float, factor: float, start_s: float, rise_s: float, hold_s: float
                     ) -> Callable[[float], float]:
    """Base rate; from `start_s` it rises linearly to `factor` x base within `rise_s`, holds for
    `hold_s`, then drops back to base at once."""
    def rate(t: float) -> float:
        if t < start_s or t >= start_s + rise_s + hold_s:
            return base_rps
        return base_rps * (1 + (factor - 1) * min(1.0, (t - start_s) / rise_s))
    return rate


def diurnal_rate(trough_rps: float, peak_rps: float, period_s: float) -> Callable[[float], float]:
    """A raised cosine: `trough_rps` at t=0, `peak_rps` at period/2, back at `period_s`."""
    return lambda t: trough_rps + (peak_rps - trough_rps) * (1 - math.cos(2 * math.pi * t / period_s)) / 2


# ---------------------------------------------------------------- the family


@dataclass(frozen=True)
class Workload:
    """One member of the family."""

    name: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    build: Callable[[int], list[Request]] = field(default=lambda seed: [], repr=False, compare=False)

    def requests(self, seed: int = 0) -> list[Request]:
        return self.build(seed)


def _requests(times: np.ndarray, lengths: Lengths, rng: np.random.Generator) -> list[Request]:
    return [Request(float(t), c, g) for t, (c, g) in zip(times, lengths.draw(len(times), rng))]


def _merge(*streams: list[Request]) -> list[Request]:
    return sorted((r for s in streams for r in s), key=lambda r: r.arrival_s)


def _trace_half(which: int, token_scale: float) -> Callable[[int], list[Request]]:
    def build(seed: int) -> list[Request]:  # the recorded trace: the seed does not change it
        reqs = load_trace(DEFAULT_TRACE, token_scale=token_scale)
        mid = reqs[-1].arrival_s / 2
        return window(reqs, 0, mid) if which == 0 else window(reqs, mid)
    return build


def _mmpp(mean_rps: float, ratio: float, duration_s: float, lengths: Lengths, low_mean_s: float = 240.0,
          high_mean_s: float = 60.0) -> Callable[[int], list[Request]]:
    def build(seed: int) -> list[Request]:
        rng = np.random.default_rng(seed)
        return _requests(mmpp_times(mean_rps, ratio, low_mean_s, high_mean_s, duration_s, rng), lengths, rng)
    return build


def _nhpp(rate: Callable[[float], float], peak: float, duration_s: float, lengths: Lengths
          ) -> Callable[[int], list[Request]]:
    def build(seed: int) -> list[Request]:
        rng = np.random.default_rng(seed)
        return _requests(poisson_times(rate, peak, duration_s, rng), lengths, rng)
    return build


def _mix(duration_s: float) -> Callable[[int], list[Request]]:
    def build(seed: int) -> list[Request]:
        rng = np.random.default_rng(seed)
        return _merge(
            _requests(mmpp_times(2.5, 4.0, 240.0, 60.0, duration_s, rng), CONVERSATION, rng),
            _requests(poisson_times(diurnal_rate(0.2, 1.2, duration_s), 1.2, duration_s, rng), PREFILL_HEAVY, rng),
            _requests(poisson_times(flash_crowd_rate(0.3, 5, duration_s / 2, 60, 300), 1.5, duration_s, rng),
                      DECODE_HEAVY, rng))
    return build


def family(duration_s: float = 1800.0) -> dict[str, Workload]:
    """The members, by name. Generated members last `duration_s` (the trace halves ~1750 s)."""
    d = duration_s
    members = [
        Workload("conversation-a", "Azure LLM conversation trace, first half (recorded arrivals and lengths)",
                 {"trace": DEFAULT_TRACE.name, "part": "first half", "token_scale": TOKEN_SCALE},
                 _trace_half(0, TOKEN_SCALE)),
        Workload("conversation-b", "Azure LLM conversation trace, second half",
                 {"trace": DEFAULT_TRACE.name, "part": "second half", "token_scale": TOKEN_SCALE},
                 _trace_half(1, TOKEN_SCALE)),
    ]
    for ratio in (3, 6, 10):
        members.append(Workload(
            f"mmpp-x{ratio}", f"bursty: two-state MMPP, bursts {ratio}x the quiet rate, conversation lengths",
            {"mean_rps": 5.0, "burst_ratio": ratio, "low_mean_s": 240, "high_mean_s": 60, "duration_s": d,
             "lengths": CONVERSATION.name}, _mmpp(5.0, ratio, d, CONVERSATION)))
    members += [
        Workload("flash-crowd", "flash crowd: 3 req/s, x5 within a minute at 1/3 of the run, held 10 min, gone at once",
                 {"base_rps": 3.0, "factor": 5, "start_s": d / 3, "rise_s": 60, "hold_s": 600, "duration_s": d,
                  "lengths": CONVERSATION.name},
                 _nhpp(flash_crowd_rate(3.0, 5, d / 3, 60, 600), 15.0, d, CONVERSATION)),
        Workload("diurnal", "slow diurnal ramp: raised cosine 1 -> 9 -> 1 req/s over the run",
                 {"trough_rps": 1.0, "peak_rps": 9.0, "period_s": d, "duration_s": d, "lengths": CONVERSATION.name},
                 _nhpp(diurnal_rate(1.0, 9.0, d), 9.0, d, CONVERSATION)),
        Workload("prefill-heavy", "long prompts, short answers (prompts x4, answers x1/4), MMPP bursts x3",
                 {"mean_rps": 2.5, "burst_ratio": 3, "duration_s": d, "context_scale": PREFILL_HEAVY.context_scale,
                  "generated_scale": PREFILL_HEAVY.generated_scale, "max_context_tokens": PREFILL_HEAVY.max_context_tokens},
                 _mmpp(2.5, 3.0, d, PREFILL_HEAVY)),
        Workload("decode-heavy", "short prompts, long answers (prompts x1/4, answers x3), MMPP bursts x3",
                 {"mean_rps": 1.5, "burst_ratio": 3, "duration_s": d, "context_scale": DECODE_HEAVY.context_scale,
                  "generated_scale": DECODE_HEAVY.generated_scale},
                 _mmpp(1.5, 3.0, d, DECODE_HEAVY)),
        Workload("mix", "superposition: conversation MMPP x4 (2.5 req/s) + prefill-heavy diurnal (0.2-1.2 req/s) "
                        "+ decode-heavy flash crowd (0.3 -> 1.5 req/s)",
                 {"duration_s": d}, _mix(d)),
    ]
    return {w.name: w for w in members}


def load_profile(requests: list[Request], bin_s: float = 30.0) -> dict[str, list[float]]:
    """Offered load per bin: requests per second, and prompt and answer tokens per second."""
    end = max((r.arrival_s for r in requests), default=0.0)
    nb = int(end // bin_s) + 1
    rps, ctx, gen = np.zeros(nb), np.zeros(nb), np.zeros(nb)
    for r in requests:
        i = int(r.arrival_s // bin_s)
        rps[i] += 1
        ctx[i] += r.context_tokens
        gen[i] += r.generated_tokens
    return {"t_s": [i * bin_s for i in range(nb)], "rps": (rps / bin_s).tolist(),
            "prompt_tokens_per_s": (ctx / bin_s).tolist(), "answer_tokens_per_s": (gen / bin_s).tolist()}
