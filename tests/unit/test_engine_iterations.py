"""Per-iteration engine records: vLLM's stats objects -> the replica's JSON-lines log -> the
planner's step-model fit (a fake record stream of vLLM's own classes, no engine, no Ray)."""

from __future__ import annotations

import io

import pytest

from corral.common.engine_model import StepModel
from corral.loadtests.planning import ITERATIONS_FILE, read_iterations
from corral.serving.llm_server import IterationLog


def _stats(iteration, decode, ctx_tokens, elapsed_ms):
    from vllm.v1.metrics.stats import SchedulerIterationDetails, SchedulerStats

    stats = SchedulerStats()
    stats.iteration_details = SchedulerIterationDetails(
        iteration_index=iteration, num_ctx_requests=1 if ctx_tokens else 0, num_ctx_tokens=ctx_tokens,
        num_generation_requests=decode, num_generation_tokens=decode, elapsed_ms=elapsed_ms)
    return stats


def test_iteration_log_feeds_the_planners_step_fit(tmp_path):
    true = StepModel(base_s=0.012, per_decode_seq_s=0.003, per_prefill_token_s=0.0002)
    out = io.StringIO()
    log = IterationLog(out, clock=lambda: 1.0)
    k = 0
    for decode in range(0, 9):
        for ctx in (0, 16, 64, 200):
            if decode + ctx:
                log.record(_stats(k, decode, ctx, 1000 * true.step_s(decode, ctx)), None)
                k += 1
    log.record(None, None)  # iterations without scheduler stats are skipped
    log.record(_stats(k, 0, 0, 0.0), None)  # and so are empty ones (by the reader)
    log.log()
    path = tmp_path / ITERATIONS_FILE
    path.write_text(out.getvalue())
    assert len(out.getvalue().splitlines()) == k + 1
    records = read_iterations(path)
    assert len(records) == k
    from corral.common.engine_model import fit_step_model

    fit = fit_step_model(records)
    assert fit.model.base_s == pytest.approx(true.base_s, rel=1e-6)
    assert fit.model.per_decode_seq_s == pytest.approx(true.per_decode_seq_s, rel=1e-6)
    assert fit.model.per_prefill_token_s == pytest.approx(true.per_prefill_token_s, rel=1e-6)
    assert read_iterations(tmp_path / "none.jsonl") is None
