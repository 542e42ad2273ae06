"""`corral loadtest` end to end: real locust, real HTTP, against the deterministic mock server.

The load generator runs in a child process (locust monkey-patches its process for gevent).
Tolerances are stated per check; they hold on a busy 2-core machine.
"""

import json
import subprocess
import sys

import pytest

from corral.loadtests.arrivals import poisson_schedule
from corral.loadtests.mockserver import spawn
from corral.loadtests.report import read_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TTFT, ITL = 0.100, 0.020


def loadtest(url, out, *args, timeout=120):
    cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--base-url", url, "--out", str(out),
           "--progress-interval", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "summary.json").read_text()), read_records(out / "requests.jsonl"), proc


@pytest.fixture(scope="module")
def fixed_mock():
    with spawn({"arms": [{"name": "fixed", "mode": "fixed", "ttft_s": TTFT, "itl_s": ITL},
                         {"name": "fast", "mode": "fixed", "ttft_s": 0.01, "itl_s": 0.002}]}) as url:
        yield url


def test_closed_loop_measures_the_known_timings(fixed_mock, tmp_path):
    summary, records, proc = loadtest(fixed_mock, tmp_path, "--model", "fixed", "--mode", "closed",
                                      "--concurrency", "4", "--duration", "4", "--warmup", "1",
                                      "--input-tokens", "40", "--output-tokens", "12")
    s = summary["stages"][0]
    # Known timings: median TTFT within 10 ms + 5 %, median ITL and TPOT within 2 ms + 5 %.
    assert s["ttft_s"]["p50"] == pytest.approx(TTFT, abs=0.010 + 0.05 * TTFT)
    assert s["itl_s"]["p50"] == pytest.approx(ITL, abs=0.002 + 0.05 * ITL)
    assert s["tpot_s"]["p50"] == pytest.approx(ITL, abs=0.002 + 0.05 * ITL)
    assert s["e2e_s"]["p50"] == pytest.approx(TTFT + 11 * ITL, abs=0.02 + 0.05 * (TTFT + 11 * ITL))
    measured = [r for r in records if r.phase == "measure"]
    assert s["errors"] == 0 and len(measured) == s["requests"] > 20
    # Tokens come from the server's usage; calibration hit the asked prompt length exactly.
    assert all(r.output_tokens == 12 and r.input_tokens == 40 for r in measured)
    assert s["warmup_requests"] > 0 and all(r.sent_s >= 1.0 for r in measured)
    assert all(r.lag_s is None for r in records)  # closed loop has no schedule
    # Progress lines while running; an HTML report with embedded plots.
    assert "in-flight=" in proc.stderr
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3


def test_poisson_open_loop_follows_its_schedule(fixed_mock, tmp_path):
    summary, records, _ = loadtest(fixed_mock, tmp_path, "--model", "fixed", "--mode", "poisson", "--rate", "15",
                                   "--duration", "3", "--warmup", "1", "--output-tokens", "5", "--seed", "7")
    expected = poisson_schedule(15, 3, 128, 5, seed=7, warmup_s=1)
    assert len(records) == len(expected)
    assert sorted(r.scheduled_s for r in records) == pytest.approx([a.at_s for a in expected])
    lags = sorted(r.lag_s for r in records)
    assert lags[len(lags) // 2] < 0.02  # the generator kept up: median send lag under 20 ms
    assert not summary["stages"][0]["generator_behind"] or summary["warnings"]


def test_a_generator_that_falls_behind_is_reported(fixed_mock, tmp_path):
    # 2 slots, requests of ~0.3 s, 20 rps offered: sends must run late.
    summary, records, _ = loadtest(fixed_mock, tmp_path, "--model", "fixed", "--mode", "constant", "--rate", "20",
                                   "--duration", "1.5", "--warmup", "0", "--output-tokens", "10",
                                   "--max-in-flight", "2")
    s = summary["stages"][0]
    assert s["generator_behind"] and s["late_requests"] > 10
    assert s["lag_s"]["max"] > 0.8
    assert any("fell behind" in w for w in summary["warnings"])


def test_trace_replay_of_a_compressed_slice(fixed_mock, tmp_path):
    from corral.loadtests.config import LoadConfig

    trace = LoadConfig().trace_path
    summary, records, _ = loadtest(fixed_mock, tmp_path, "--model", "fast", "--mode", "trace", "--trace", trace,
                                   "--trace-start", "60", "--speedup", "20", "--duration", "3", "--warmup", "0.5",
                                   "--max-total-tokens", "400")
    meta = summary["config"]["trace_meta"]
    assert meta["requests"] == len(records) > 20 and meta["trace_span_s"] == pytest.approx(70, abs=5)
    ok = [r for r in records if r.ok]
    assert len(ok) == len(records)
    # Prompts synthesized to the trace's token counts, outputs forced to its lengths (clipped to 400).
    assert all(r.input_tokens == r.target_input_tokens and r.output_tokens == r.target_output_tokens for r in ok)
    assert all(r.input_tokens + r.output_tokens <= 400 for r in ok)
    assert len({r.output_tokens for r in ok}) > 5


def test_split_route_gets_a_per_arm_breakdown(tmp_path):
    config = {"arms": [{"name": "arm-a", "ttft_s": 0.05, "itl_s": 0.01},
                       {"name": "arm-b", "ttft_s": 0.15, "itl_s": 0.01}],
              "routes": {"llama": {"arm-a": 50, "arm-b": 50}}}
    with spawn(config) as url:
        summary, records, _ = loadtest(url, tmp_path, "--model", "llama", "--mode", "closed", "--concurrency", "4",
                                       "--duration", "3", "--warmup", "0.5", "--output-tokens", "6")
    arms = summary["stages"][0]["arms"]
    assert set(arms) == {"arm-a", "arm-b"}
    assert arms["arm-a"]["ttft_s"]["p50"] == pytest.approx(0.05, abs=0.015)
    assert arms["arm-b"]["ttft_s"]["p50"] == pytest.approx(0.15, abs=0.015)
    assert "Per-arm breakdown" in (tmp_path / "report.html").read_text()


def test_sweep_then_plan_capacity(tmp_path):
    # A batched engine: iteration 10 ms + 4 ms per running sequence, 16 slots.
    config = {"arms": [{"name": "b", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.004,
                        "prefill_per_token_s": 0.0, "max_num_seqs": 16}]}
    slo = "ttft_p90=0.5,tpot_p90=0.035"
    with spawn(config) as url:
        summary, records, proc = loadtest(url, tmp_path, "--model", "b", "--mode", "sweep", "--slo", slo,
                                          "--sweep-start", "4", "--sweep-step", "8", "--sweep-max", "36",
                                          "--duration", "3", "--warmup", "1", "--output-tokens", "16",
                                          "--input-tokens", "16")
    stages = summary["stages"]
    # Stopped after two consecutive misses (the default), before the last rate.
    assert stages[0]["slo"]["met"] and not stages[-1]["slo"]["met"] and not stages[-2]["slo"]["met"]
    assert len(stages) < 5 and "(2 consecutive stage(s))" in summary["stopped"]
    plan = subprocess.run([sys.executable, "-c", PLAN_CLI, "--results", str(tmp_path), "--slo", slo,
                           "--target-rps", "40", "--gpu-price", "2", "--replicas", "1", "--max-num-seqs", "16"],
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    result = json.loads((tmp_path / "capacity-plan.json").read_text())
    # Exactly rate x window arrivals per stage, so each stage's realised rate is its nominal one.
    assert [s["realised_rate_rps"] for s in stages] == pytest.approx([s["offered_rate_rps"] for s in stages])
    assert stages[0]["realised_rate_rps"] <= result["measured_lambda_star_per_replica_rps"] <= stages[-1]["realised_rate_rps"]
    assert result["replicas"] >= 2 and result["usd_per_hour"] == 2 * result["gpus"]
    assert "replicas:" in (tmp_path / "capacity-overlay.yaml").read_text()


# Drive `corral plan capacity` through its own parser.
PLAN_CLI = """
import argparse, sys
from corral.commands import _plan_capacity
from corral.commands._common import CliError
p = argparse.ArgumentParser(); _plan_capacity.register(p.add_subparsers())
a = p.parse_args(["capacity", *sys.argv[1:]])
try:
    sys.exit(a.func(a))
except CliError as e:
    print(e, file=sys.stderr); sys.exit(e.code)
"""
