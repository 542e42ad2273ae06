"""corral's arm deployment: Ray Serve LLM's `LLMServer`, reporting engine signals to the autoscaler.

The autoscaling policy (`corral.autoscaler.policy`) scales on latency and KV cache use as well
as on request counts. Those numbers come from vLLM itself: the engine computes time to first
token, per-request inter-token latency and KV cache use for its own metrics every iteration
(`IterationStats`, `SchedulerStats`). `EngineSignals` is a vLLM stat logger that keeps the
recent ones; `CorralLLMServer.record_autoscaling_stats` is Ray Serve's hook for custom
autoscaling metrics, so they reach the policy through `AutoscalingContext.aggregated_metrics`
on Serve's own metrics path (no second loop, no Prometheus round trip). Each replica also
reports the prompt tokens its engine holds that are still waiting for their prefill
(`queued_prompt_tokens`: vLLM's `AsyncLLM.get_num_queued_tokens()`, vllm 0.32
`v1/engine/async_llm.py` -> `OutputProcessor.get_num_queued_tokens`, the prompt lengths of the
requests in their prefill phase), the prefill pressure an ongoing-requests count does not show.
Serve averages every custom metric per replica over `look_back_period_s`
(`AutoscalingState._get_aggregated_custom_metrics`, Ray 2.60 `serve/_private/autoscaling_state.py`).

The metric names are shared with the policy through `corral.cluster.metric_names` (serving may
not import the autoscaler layer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from typing import IO, Any

from ray.serve.llm import LLMServer

from corral.cluster import metric_names as names
from corral.common.stats import quantile

logger = logging.getLogger("ray.serve")


class _StatLoggerHooks:
    """The parts of vLLM's `StatLoggerBase` interface (vllm/v1/metrics/loggers.py) corral's
    loggers do not use."""

    def log_engine_initialized(self) -> None:
        pass

    def record_sleep_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record_admission_rejection(self, *args: Any, **kwargs: Any) -> None:
        pass


class EngineSignals(_StatLoggerHooks):
    """A vLLM stat logger (the `StatLoggerBase` interface) that keeps the last `window_s` of
    TTFT and per-request mean ITL samples, the work done per iteration and the latest KV cache
    use, for the autoscaler.

    vLLM calls `record` from its output handler on the replica's event loop; `snapshot` runs on
    the same loop, so no lock is needed. Memory is bounded by the window and `max_samples`.
    """

    def __init__(self, window_s: float = 20.0, max_samples: int = 4096, clock=time.monotonic):
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._itl: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._kv: tuple[float, float] | None = None
        # (time, requests prefilled, prompt tokens computed, output tokens after the first) per iteration
        self._work: deque[tuple[float, int, int, int]] = deque(maxlen=max_samples)

    # -- vLLM's StatLoggerBase interface ---------------------------------------------------

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        now = self._clock()
        if scheduler_stats is not None:
            self._kv = (now, float(scheduler_stats.kv_cache_usage))
        if iteration_stats is not None:
            for ttft in iteration_stats.time_to_first_tokens_iter:
                self._ttft.append((now, ttft))
            prefilled = len(iteration_stats.time_to_first_tokens_iter)
            prompt = getattr(getattr(iteration_stats, "prompt_token_stats", None), "computed", 0)
            decoded = max(0, int(getattr(iteration_stats, "num_generation_tokens", 0)) - prefilled)
            if prefilled or prompt or decoded:
                self._work.append((now, prefilled, int(prompt), decoded))
            for done in iteration_stats.finished_requests:
                # One sample per request: the SLO is on each request's mean inter-token latency.
                if done.num_generation_tokens > 1 and done.mean_time_per_output_token > 0:
                    self._itl.append((now, done.mean_time_per_output_token))

    def log(self) -> None:
        pass


    # -- what the autoscaler reads ---------------------------------------------------------

    def snapshot(self) -> dict[str, float]:
        """p95 TTFT and ITL over the window, KV cache use, and the work done over the window per
        second (requests prefilled, prompt tokens computed, output tokens decoded after each
        request's first); keys only for what was seen (the work rates once anything was seen)."""
        cutoff = self._clock() - self.window_s
        for samples in (self._ttft, self._itl, self._work):
            while samples and samples[0][0] < cutoff:
                samples.popleft()
        out: dict[str, float] = {}
        ttft = quantile([v for _, v in self._ttft], 0.95)
        itl = quantile([v for _, v in self._itl], 0.95)
        if ttft is not None:
            out[names.SIGNAL_TTFT_P95] = ttft
        if itl is not None:
            out[names.SIGNAL_ITL_P95] = itl
        if self._kv is not None and self._kv[0] >= cutoff:
            out[names.SIGNAL_KV_CACHE] = self._kv[1]
        if self._work or (self._kv is not None and self._kv[0] >= cutoff):
            for k, name in enumerate((names.SIGNAL_REQUESTS_PER_S, names.SIGNAL_PROMPT_TOKENS_PER_S,
                                      names.SIGNAL_OUTPUT_TOKENS_PER_S), start=1):
                out[name] = sum(w[k] for w in self._work) / self.window_s
        return out


ITERATIONS_ENV = "CORRAL_ENGINE_ITERATIONS_FILE"
"""When set in a replica's environment, its engine's per-iteration records are appended to this
file (JSON lines; `IterationLog`). vLLM fills them only with the engine argument
`enable_logging_iteration_details` (fleet spec: `engine.extra`)."""


class IterationLog(_StatLoggerHooks):
    """A vLLM stat logger that appends each engine iteration's `SchedulerIterationDetails`
    (`vllm/v1/metrics/stats.py`: ctx/generation requests and tokens, `elapsed_ms`; attached to
    `SchedulerStats.iteration_details` by `EngineCore.capture_iteration_details`) to a JSON-lines
    file, with the wall time and the engine index: the records `corral plan capacity` fits its
    step model from (`corral.common.engine_model.iteration_record`)."""

    def __init__(self, out: IO[str], clock=time.time):
        self._out, self._clock = out, clock

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        details = getattr(scheduler_stats, "iteration_details", None)
        if details is None:
            return
        row = {f.name: getattr(details, f.name) for f in dataclasses.fields(details)} \
            if dataclasses.is_dataclass(details) else dict(vars(details))
        row.update(t_unix=self._clock(), engine_idx=engine_idx)
        self._out.write(json.dumps(row) + "\n")

    def log(self) -> None:
        self._out.flush()



def attach_signals(engine: Any, signals: EngineSignals | IterationLog) -> bool:
    """Add `signals` to a started Ray Serve LLM vLLM engine's stat loggers. False (and a log
    line) when the engine keeps no stats, e.g. `disable_log_stats` or another engine class."""
    client = getattr(engine, "_engine_client", None)
    manager = getattr(client, "logger_manager", None)
    loggers = getattr(manager, "stat_loggers", None)
    if not isinstance(loggers, list):
        logger.warning("corral: the engine reports no stats; the autoscaler scales on request counts only")
        return False
    loggers.append(signals)
    return True


def queued_prompt_tokens(engine: Any) -> float | None:
    """Prompt tokens of the requests a started Ray Serve LLM vLLM engine holds that have not
    had their first token (vLLM's `get_num_queued_tokens`); None where the engine has no such
    count (another engine class, an older vLLM)."""
    client = getattr(engine, "_engine_client", None)
    count = getattr(client, "get_num_queued_tokens", None)
    if not callable(count):
        return None
    try:
        return float(count())
    except Exception:  # noqa: BLE001 - a failing count must not stop the replica's other signals
        logger.warning("corral: the engine's queued prompt tokens could not be read", exc_info=True)
        return None


class CorralLLMServer(LLMServer):
    """`LLMServer` plus `record_autoscaling_stats` (engine TTFT, ITL, KV cache use and queued
    prompt tokens)."""

    async def start(self) -> None:
        await super().start()
        self._corral_signals = EngineSignals()
        attach_signals(self.engine, self._corral_signals)
        path = os.environ.get(ITERATIONS_ENV)
        if path:
            self._corral_iterations = open(path, "a", buffering=1)  # line-buffered: a record per line
            attach_signals(self.engine, IterationLog(self._corral_iterations))

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Ray Serve calls this every `metrics_interval_s`; values reach the autoscaling policy."""
        signals = getattr(self, "_corral_signals", None)
        out = signals.snapshot() if signals is not None else {}
        queued = queued_prompt_tokens(getattr(self, "engine", None))
        if queued is not None:
            out[names.SIGNAL_QUEUED_PROMPT_TOKENS] = queued
        return out
