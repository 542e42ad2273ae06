"""The mock server's batched arms run the one engine model (`corral.common.engine_model`): each
engine-loop step sleeps the model's step time and hands out the model's tokens. Checked with the
loop's sleep recorded instead of slept (this machine's load makes wall-clock timings too noisy
for a unit test; tests/e2e/test_loadtest_mock.py drives a batched arm over HTTP)."""

import asyncio

import pytest

from corral.common.engine_model import Arrival, EngineModel, SchedulerLimits, StepModel, replay
from corral.loadtests import mockserver
from corral.loadtests.mockserver import ArmConfig, _Engine

ARM = ArmConfig(name="b", mode="batched", step_base_s=0.050, step_per_seq_s=0.020, prefill_per_token_s=0.001,
                max_num_seqs=4, max_num_batched_tokens=120)


def test_batched_arm_steps_are_the_engine_models(monkeypatch):
    slept = []

    async def record(loop, deadline):
        slept.append(round(deadline - loop.time(), 9))
        await asyncio.sleep(0)

    monkeypatch.setattr(mockserver, "_sleep_until", record)

    async def run():
        engine = _Engine(ARM)
        streams = [engine.submit(100, 3), engine.submit(50, 2)]
        out = []
        for s in streams:
            items = [await s.get() for _ in range(3 if s is streams[0] else 2)]
            out.append(items)
        engine._task.cancel()
        return out

    tokens = asyncio.run(run())
    # Budget 120 tokens: step 1 = A's 100-token prefill + 20 of B's (50 + 120 = 170 ms; A's first
    # token); step 2 = A decodes, B's last 30 prompt tokens (50 + 20 + 30 = 100 ms; B's first token);
    # step 3 = both decode (50 + 40 = 90 ms; A's third token and B's second: both done).
    assert slept == pytest.approx([0.170, 0.100, 0.090], abs=1e-3)
    assert tokens == [[False, False, True], [False, True]]
    # The same schedule replayed: the same steps, so the same token times.
    model = EngineModel(StepModel(ARM.step_base_s, ARM.step_per_seq_s, ARM.prefill_per_token_s))
    a, b = replay([Arrival(0.0, 100, 3), Arrival(0.0, 50, 2)], model,
                  SchedulerLimits(ARM.max_num_seqs, ARM.max_num_batched_tokens))
    assert (a.ttft_s, b.ttft_s, b.e2e_s, a.e2e_s) == pytest.approx((0.170, 0.270, 0.360, 0.360))
