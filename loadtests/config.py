"""What a load test does: one typed config, validated, and the stages it expands into.

Pure (no locust import), so the CLI can reject bad input before gevent patches anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from corral.loadtests.arrivals import (
    DEFAULT_TRACE,
    Arrival,
    constant_schedule,
    load_trace,
    poisson_schedule,
    sweep_rates,
    trace_schedule,
)
from corral.loadtests.slo import parse_slo

MODES = ("closed", "constant", "poisson", "trace", "sweep")


@dataclass
class LoadConfig:
    """A load test against one OpenAI-compatible endpoint. Times in seconds."""

    base_url: str = "http://127.0.0.1:8000"
    """Endpoint root (the /v1 paths are appended). Load goes to 127.0.0.1 only."""
    model: str = "llama"
    """Model or route name to request."""
    chat: bool = False
    """Use /v1/chat/completions instead of /v1/completions (the chat template adds prompt tokens)."""
    mode: str = "closed"
    """closed | constant | poisson | trace | sweep."""
    concurrency: int = 4
    """closed: users each sending their next request when the previous one ends."""
    rate_rps: float = 1.0
    """constant / poisson: offered request rate."""
    duration_s: float = 30.0
    """Measured time per stage (after warm-up)."""
    warmup_s: float = 5.0
    """Time at the start of each stage whose requests are excluded from summaries."""
    max_requests: int | None = None
    """Upper bound on requests per stage (warm-up included); None = only time bounds."""
    input_tokens: int = 128
    """Prompt length for synthetic modes."""
    output_tokens: int = 64
    """Answer length for synthetic modes."""
    force_output: bool = True
    """Send ignore_eos + min_tokens so answers have exactly the asked length (vLLM extension)."""
    trace_path: str = str(DEFAULT_TRACE)
    """trace: Azure LLM trace CSV or .csv.gz (relative paths are resolved against the current directory);
    default: the Azure conversation trace shipped with corral."""
    trace_start_s: float = 0.0
    """trace: where in the trace to start (trace time)."""
    trace_speedup: float = 1.0
    """trace: time compression factor (10 = ten times faster than recorded)."""
    trace_keep: float = 1.0
    """trace: share of the trace's requests sent (seeded random thinning; bursts keep their timing)."""
    trace_token_scale: float = 1.0
    """trace: factor on every prompt and answer length (0.1 = a tenth of the recorded tokens)."""
    max_total_tokens: int | None = 2048
    """trace: clip prompt + answer to this (the engine's max_model_len); None = no clipping."""
    sweep_arrival: str = "poisson"
    """sweep: arrival process of each stage (poisson or constant)."""
    sweep_start_rps: float = 0.5
    """sweep: first rate."""
    sweep_step_rps: float = 0.5
    """sweep: rate increment per stage."""
    sweep_max_rps: float = 8.0
    """sweep: last rate tried if the SLO never fails."""
    sweep_failures: int = 2
    """sweep: stop after this many consecutive stages that miss the SLO. Two, so that one stage
    missing by sampling noise does not end the sweep: the planner fits attainment over every stage."""
    slo: str | None = None
    """SLO clauses (`ttft_p95=0.5,itl_p95=0.05`): summaries report attainment; sweeps stop on it."""
    max_in_flight: int = 256
    """Open loop: most requests in flight at once (the locust user pool). When all are busy the
    generator falls behind its schedule; that lag is recorded and reported."""
    max_lag_s: float = 0.05
    """A stage whose p99 send lag exceeds this is flagged: the generator, not the server, limited it."""
    request_timeout_s: float = 120.0
    """Longest a single request may take."""
    calibrate_tokens: bool = True
    """Probe the server's usage to map prompt words to tokens before the run."""
    seed: int = 0
    """Seed for Poisson arrivals (with the rate: one rate, one schedule, in every sweep) and prompt text."""
    progress_interval_s: float = 2.0
    """Seconds between progress lines on stderr (0 = quiet)."""
    trace_meta: dict = field(default_factory=dict)
    """Filled in by stages(): what slice of the trace was replayed."""

    def validate(self) -> LoadConfig:
        """Raise ValueError naming the field for bad values."""
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {list(MODES)}")
        if not self.base_url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
            raise ValueError(f"base_url={self.base_url!r}: load tests only target 127.0.0.1 (http://127.0.0.1:PORT)")
        positive = {"concurrency": self.concurrency, "rate_rps": self.rate_rps, "duration_s": self.duration_s,
                    "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                    "trace_speedup": self.trace_speedup, "max_in_flight": self.max_in_flight,
                    "request_timeout_s": self.request_timeout_s, "sweep_failures": self.sweep_failures,
                    "max_lag_s": self.max_lag_s}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}={value} must be > 0")
        for name in ("warmup_s", "trace_start_s", "progress_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("trace_keep", "trace_token_scale"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in (0, 1]")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests={self.max_requests} must be >= 1")
        if self.sweep_arrival not in ("poisson", "constant"):
            raise ValueError(f"sweep_arrival={self.sweep_arrival!r} is not 'poisson' or 'constant'")
        if self.mode == "sweep":
            sweep_rates(self.sweep_start_rps, self.sweep_step_rps, self.sweep_max_rps)
            if not self.slo:
                raise ValueError("slo is required for mode=sweep (the sweep stops when the SLO fails)")
        if self.slo:
            parse_slo(self.slo)
        if self.mode == "trace" and not Path(self.trace_path).is_file():
            raise ValueError(f"trace_path={self.trace_path!r} does not exist")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StagePlan:
    """One stage of a run: a closed-loop user count or an open-loop schedule."""

    name: str
    duration_s: float
    warmup_s: float
    concurrency: int | None = None
    """closed loop only."""
    schedule: list[Arrival] | None = None
    """open loop only (times include the warm-up)."""
    rate_rps: float | None = None
    """Nominal offered rate (open loop). Reports and the planner use the realised rate: the
    stage's measured requests / `duration_s` (loadtests/METRICS.md)."""


def stages(config: LoadConfig) -> list[StagePlan]:
    """The stages a config runs, in order (a sweep lists all its rates; the runner stops early)."""
    c = config
    total = c.warmup_s + c.duration_s
    if c.mode == "closed":
        return [StagePlan(f"concurrency={c.concurrency}", c.duration_s, c.warmup_s, concurrency=c.concurrency)]

    def open_stage(name: str, rate: float, arrival: str) -> StagePlan:
        if arrival == "constant":
            sched = constant_schedule(rate, total, c.input_tokens, c.output_tokens)
        else:
            # Seeded by (seed, rate) alone: the same rate gets the same arrivals in every sweep.
            sched = poisson_schedule(rate, c.duration_s, c.input_tokens, c.output_tokens, seed=c.seed,
                                     warmup_s=c.warmup_s)
        return StagePlan(name, c.duration_s, c.warmup_s, schedule=_cap(sched, c.max_requests), rate_rps=rate)

    if c.mode in ("constant", "poisson"):
        return [open_stage(f"rate={c.rate_rps:g}", c.rate_rps, c.mode)]
    if c.mode == "sweep":
        return [open_stage(f"rate={r:g}", r, c.sweep_arrival)
                for r in sweep_rates(c.sweep_start_rps, c.sweep_step_rps, c.sweep_max_rps)]
    # trace
    rows = load_trace(c.trace_path)
    sl = trace_schedule(rows, start_s=c.trace_start_s, duration_s=total, speedup=c.trace_speedup,
                        max_requests=c.max_requests, max_total_tokens=c.max_total_tokens,
                        keep=c.trace_keep, token_scale=c.trace_token_scale, seed=c.seed)
    rate = len(sl.arrivals) / total if sl.arrivals else 0.0
    c.trace_meta = {"requests": len(sl.arrivals), "clipped": sl.clipped, "trace_span_s": sl.trace_span_s,
                    "mean_rate_rps": rate, "keep": c.trace_keep, "token_scale": c.trace_token_scale}
    return [StagePlan(f"trace x{c.trace_speedup:g}", c.duration_s, c.warmup_s, schedule=sl.arrivals,
                      rate_rps=rate)]


def _cap(schedule: list[Arrival], max_requests: int | None) -> list[Arrival]:
    return schedule if max_requests is None else schedule[:max_requests]
