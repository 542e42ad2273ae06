"""Arrival processes: when requests are sent and how long their prompts and answers are.

Pure functions producing schedules (lists of Arrival) for the runner. Closed loop has no
schedule (each of N users sends its next request when its previous one ends); open loop sends
at scheduled times whatever the server does: constant rate, Poisson, or a replayed trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from corral.common.traces import DEFAULT_TRACE, TraceRow, keep_mask, read_trace, scale_tokens


@dataclass(frozen=True)
class Arrival:
    """One request to send."""

    at_s: float
    """Scheduled send time, seconds after the stage start."""
    input_tokens: int
    """Prompt length to synthesize, in tokens."""
    output_tokens: int
    """Answer length to ask for, in tokens."""


def _check_rate(rate_rps: float, duration_s: float) -> None:
    if not rate_rps > 0:
        raise ValueError(f"rate_rps={rate_rps} must be > 0")
    if not duration_s > 0:
        raise ValueError(f"duration_s={duration_s} must be > 0")


def constant_schedule(rate_rps: float, duration_s: float, input_tokens: int, output_tokens: int) -> list[Arrival]:
    """Evenly spaced sends at rate_rps for duration_s."""
    _check_rate(rate_rps, duration_s)
    n = int(rate_rps * duration_s + 1e-9)
    return [Arrival(i / rate_rps, input_tokens, output_tokens) for i in range(n)]


def poisson_schedule(rate_rps: float, duration_s: float, input_tokens: int, output_tokens: int,
                     seed: int = 0, warmup_s: float = 0.0) -> list[Arrival]:
    """A Poisson process at rate_rps conditioned on its counts: exactly round(rate_rps x warmup_s)
    arrivals in the warm-up [0, warmup_s) and round(rate_rps x duration_s) in the measured window
    [warmup_s, warmup_s + duration_s), each set placed as uniform order statistics (the law of a
    Poisson process's arrival times given their number). Inside a window the arrivals are as
    bursty as a Poisson process's; what goes is the count noise between stages (an unconditioned
    stage at 1.625 rps may well send 1.79 rps), so a stage's rate is the rate it is named for,
    up to rounding: its realised rate, count / window, is reported beside it.

    Reproducible and shared: the arrivals depend only on (seed, rate_rps, window), never on
    where the stage sits in a sweep, so two configurations swept with the same seed meet the
    same arrivals at every rate they both try.
    """
    _check_rate(rate_rps, duration_s)
    if warmup_s < 0:
        raise ValueError(f"warmup_s={warmup_s} must be >= 0")
    out: list[Arrival] = []
    for window, start, length in (("warmup", 0.0, warmup_s), ("measure", warmup_s, duration_s)):
        n = round(rate_rps * length)
        # str seeds hash with SHA-512 in `random.seed` (version 2): stable across runs and platforms.
        rng = random.Random(f"corral-poisson:{seed}:{float(rate_rps)!r}:{window}")
        out += [Arrival(start + length * u, input_tokens, output_tokens) for u in sorted(rng.random() for _ in range(n))]
    return out


def load_trace(path: str | Path = DEFAULT_TRACE) -> list[TraceRow]:
    """Read an Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), or .csv.gz.
    The one trace reader, `corral.common.traces.read_trace`."""
    return read_trace(path)


@dataclass(frozen=True)
class TraceSlice:
    arrivals: list[Arrival]
    clipped: int
    """Requests whose lengths were cut to fit max_total_tokens."""
    trace_span_s: float
    """Trace time covered (before compression)."""


def trace_schedule(rows: list[TraceRow], start_s: float = 0.0, duration_s: float | None = None,
                   speedup: float = 1.0, max_requests: int | None = None,
                   max_total_tokens: int | None = None, min_output_tokens: int = 1,
                   keep: float = 1.0, token_scale: float = 1.0, seed: int = 0) -> TraceSlice:
    """Replay trace rows from start_s (trace time) for duration_s (wall time after compression).

    `speedup` compresses time: 10 sends an hour of trace in 6 minutes, 10x the rate, with the
    same burstiness. `keep` thins the trace to a random share of its requests (seeded), and
    `token_scale` shrinks every prompt and answer: together they fit a production trace to a
    small fleet while keeping when the bursts come. `max_total_tokens` (the engine's
    max_model_len) clips long requests: the prompt is shortened first, keeping the answer
    length, since decode dominates latency.
    """
    if speedup <= 0:
        raise ValueError(f"speedup={speedup} must be > 0")
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep} must lie in (0, 1]")
    if not 0 < token_scale <= 1:
        raise ValueError(f"token_scale={token_scale} must lie in (0, 1]")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration_s={duration_s} must be > 0")
    kept = keep_mask(len(rows), keep, seed)  # over the whole trace: same seed, same rows as the simulator
    out: list[Arrival] = []
    clipped = 0
    last_t = start_s
    for row, k in zip(rows, kept):
        if row.t_s < start_s:
            continue
        at = (row.t_s - start_s) / speedup
        if duration_s is not None and at >= duration_s:
            break
        if max_requests is not None and len(out) >= max_requests:
            break
        if not k:
            continue
        ctx = scale_tokens(row.context_tokens, token_scale)
        gen = scale_tokens(row.generated_tokens, token_scale, minimum=min_output_tokens)
        if max_total_tokens is not None and ctx + gen > max_total_tokens:
            clipped += 1
            gen = min(gen, max_total_tokens // 2)
            ctx = max(1, max_total_tokens - gen)
        out.append(Arrival(at, ctx, gen))
        last_t = row.t_s
    return TraceSlice(out, clipped, last_t - start_s)


def sweep_rates(start_rps: float, step_rps: float, max_rps: float) -> list[float]:
    """start, start+step, ... up to max_rps (inclusive): the rates a sweep tries in order."""
    if start_rps <= 0 or step_rps <= 0 or max_rps < start_rps:
        raise ValueError(f"sweep needs 0 < start ({start_rps}) <= max ({max_rps}) and step ({step_rps}) > 0")
    n = int((max_rps - start_rps) / step_rps + 1e-9) + 1
    return [round(start_rps + i * step_rps, 6) for i in range(n)]


# ----------------------------------------------------------------------- prompt synthesis

# Common English words that Llama-family and SmolLM BPE vocabularies encode as one token each
# (with their leading space), so N words give close to N prompt tokens.
_WORDS = (
    "the of and to in is was for that on as with by at from his an were are which this be "
    "or has had not but one their all there can been if more when will would who so no time "
    "new some these two may other first any then now made only over such years into most "
    "after also many well where did could much before way state must because each just those "
    "people day world own work part small good end year still high same city under never large"
).split()


@dataclass(frozen=True)
class TokenCalibration:
    """prompt_tokens = overhead + tokens_per_word * words, fitted from the server's usage."""

    overhead: float = 0.0
    tokens_per_word: float = 1.0

    def words_for(self, tokens: int) -> int:
        return max(1, round((tokens - self.overhead) / self.tokens_per_word))

    @classmethod
    def fit(cls, samples: list[tuple[int, int]]) -> TokenCalibration:
        """From (words sent, prompt_tokens reported) pairs with at least two word counts."""
        xs = [w for w, _ in samples]
        if len(set(xs)) < 2:
            raise ValueError(f"calibration needs two different word counts, got {sorted(set(xs))}")
        n = len(samples)
        mx, my = sum(xs) / n, sum(t for _, t in samples) / n
        slope = sum((w - mx) * (t - my) for w, t in samples) / sum((w - mx) ** 2 for w in xs)
        if slope <= 0:
            raise ValueError(f"prompt tokens do not grow with words: {samples}")
        return cls(overhead=my - slope * mx, tokens_per_word=slope)


def synthesize_prompt(words: int, salt: int = 0) -> str:
    """A prompt of `words` words. `salt` rotates the text so prompts do not share a prefix
    (a shared prefix would let the engine's prefix cache skip prefill and flatter TTFT)."""
    if words < 1:
        raise ValueError(f"words={words} must be >= 1")
    rng = random.Random(salt)
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def request_body(model: str, prompt: str, output_tokens: int, chat: bool = False, force_output: bool = True,
                 stream: bool = True) -> dict:
    """OpenAI request body. force_output asks vLLM for exactly output_tokens (ignore_eos +
    min_tokens, vLLM's extra sampling fields); usage is requested in the stream."""
    body: dict = {"model": model, "max_tokens": output_tokens, "temperature": 0.0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if force_output:
        body["ignore_eos"] = True
        body["min_tokens"] = output_tokens
    return body
