"""The replica-side autoscaling signals, fed with vLLM's own stats objects (no engine, no Ray)."""

from __future__ import annotations

import pytest

from corral.autoscaler.policy import METRIC_ITL_P95, METRIC_KV_CACHE, METRIC_TTFT_P95
from corral.serving.llm_server import EngineSignals, attach_signals


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _iteration(ttfts=(), finished=()):
    from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats

    it = IterationStats()
    it.time_to_first_tokens_iter.extend(ttfts)
    for tokens, tpot in finished:
        it.finished_requests.append(FinishedRequestStats(finish_reason=None, num_generation_tokens=tokens,
                                                         mean_time_per_output_token=tpot))
    return it


def test_signals_report_p95_over_the_window_and_forget_old_samples():
    from vllm.v1.metrics.stats import SchedulerStats

    clock = Clock()
    sig = EngineSignals(window_s=20, clock=clock)
    assert sig.snapshot() == {}  # nothing seen: no keys, the policy falls back to request counts
    sig.record(SchedulerStats(kv_cache_usage=0.25), _iteration(ttfts=[0.1 * i for i in range(1, 21)],
                                                               finished=[(10, 0.05), (1, 9.0), (5, 0.07)]))
    snap = sig.snapshot()
    # corral.common.stats.quantile (type 7, linear interpolation; formerly nearest rank, which gave
    # the 19th sample, 1.9): position 0.95 * 19 = 18.05 between 1.9 and 2.0.
    assert snap[METRIC_TTFT_P95] == pytest.approx(1.905)
    assert snap[METRIC_ITL_P95] == pytest.approx(0.069)  # 0.05 + 0.95 * (0.07 - 0.05); the one-token request has no ITL
    assert snap[METRIC_KV_CACHE] == 0.25
    clock.t += 15
    sig.record(SchedulerStats(kv_cache_usage=0.5), _iteration(ttfts=[5.0]))
    assert sig.snapshot()[METRIC_TTFT_P95] == pytest.approx(2.0)  # p95 of 21 samples: position 19, the 20th smallest
    clock.t += 10  # the first batch is now older than the window
    snap = sig.snapshot()
    assert snap[METRIC_TTFT_P95] == 5.0 and METRIC_ITL_P95 not in snap
    assert snap[METRIC_KV_CACHE] == 0.5
    clock.t += 30
    assert sig.snapshot() == {}
    with pytest.raises(ValueError, match="window_s"):
        EngineSignals(window_s=0)


def test_attach_needs_an_engine_that_keeps_stats():
    class Manager:
        stat_loggers: list = []

    class Client:
        logger_manager = Manager()

    class Engine:
        _engine_client = Client()

    sig = EngineSignals()
    assert attach_signals(Engine(), sig) and Manager.stat_loggers == [sig]
    Client.logger_manager = None  # vLLM with log_stats off
    assert not attach_signals(Engine(), EngineSignals())


def test_queued_prompt_tokens_come_from_vllms_own_count_of_requests_in_prefill():
    """vLLM's OutputProcessor (what `AsyncLLM.get_num_queued_tokens` asks) counts the prompt tokens of
    requests with no output yet; a request leaves the count with its first token."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine import EngineCoreOutput, EngineCoreRequest
    from vllm.v1.engine.output_processor import OutputProcessor

    from corral.serving.llm_server import queued_prompt_tokens

    processor = OutputProcessor(None, log_stats=False)
    params = SamplingParams(max_tokens=4, detokenize=False, output_kind=RequestOutputKind.DELTA)
    for rid, n in (("a", 120), ("b", 30)):
        processor.add_request(EngineCoreRequest(rid, list(range(n)), None, params, None, 0.0, None, None, None,
                                                external_req_id=rid), None)

    class Client:  # AsyncLLM.get_num_queued_tokens delegates to its OutputProcessor (vllm/v1/engine/async_llm.py)
        get_num_queued_tokens = processor.get_num_queued_tokens

    class Engine:
        _engine_client = Client()

    assert queued_prompt_tokens(Engine()) == 150.0
    processor.process_outputs([EngineCoreOutput("a", [7])])  # a's prefill is done: its first token
    assert queued_prompt_tokens(Engine()) == 30.0

    class OldClient:
        pass

    Engine._engine_client = OldClient()  # an engine without the count: no signal, not 0
    assert queued_prompt_tokens(Engine()) is None


def test_signals_report_the_work_done_per_second_over_the_window():
    from vllm.v1.metrics.stats import SchedulerStats

    from corral.autoscaler.policy import (
        METRIC_OUTPUT_TOKENS_PER_S,
        METRIC_PROMPT_TOKENS_PER_S,
        METRIC_REQUESTS_PER_S,
    )

    clock = Clock()
    sig = EngineSignals(window_s=20, clock=clock)
    it = _iteration(ttfts=[0.2, 0.3])  # two requests had their prefill (and first token) this step
    it.prompt_token_stats.computed = 100
    it.num_generation_tokens = 2 + 6  # their first tokens and 6 decoded ones
    sig.record(SchedulerStats(kv_cache_usage=0.1), it)
    snap = sig.snapshot()
    assert snap[METRIC_REQUESTS_PER_S] == pytest.approx(2 / 20)
    assert snap[METRIC_PROMPT_TOKENS_PER_S] == pytest.approx(100 / 20)
    assert snap[METRIC_OUTPUT_TOKENS_PER_S] == pytest.approx(6 / 20)
    clock.t += 25  # older than the window: nothing seen lately, no keys
    assert sig.snapshot() == {}
