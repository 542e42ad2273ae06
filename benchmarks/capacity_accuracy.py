"""Prediction accuracy of `corral plan capacity` (issue 7, goal: error <= 8 %).

Measure a rate sweep at configuration A, fit the planner, predict λ* (highest rate meeting the
SLO) at configuration B (e.g. two replicas, or another max_num_seqs), then measure B's λ* with
the same sweep and print the relative error, side by side in one run, as JSON. The result is
also written to OUT/accuracy.json and appended to B's report.html.

Real fleet (the two configurations as two arms of one fleet, pinned by arm name; --fleet
deploys it first and stops it at the end):
    python benchmarks/capacity_accuracy.py --fleet benchmarks/fleets/capacity-accuracy.yaml \
        --model-a seqs8 --max-num-seqs-a 8 --model-b seqs2 --max-num-seqs-b 2 --replicas-b 1 \
        --slo ttft_p95=2,tpot_p95=0.25 --sweep-start 0.2 --sweep-step 0.2 --sweep-max 3 \
        --duration 40 --warmup 5 --input-tokens 64 --output-tokens 16
Self-check of the pipeline against the simulated engine (no fleet needed):
    python benchmarks/capacity_accuracy.py --mock
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

MOCK = {"arms": [
    {"name": "a", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.003, "prefill_per_token_s": 0.0,
     "max_num_seqs": 16, "replicas": 1},
    {"name": "b", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.003, "prefill_per_token_s": 0.0,
     "max_num_seqs": 16, "replicas": 2},
]}


def sweep(base_url: str, model: str, out: Path, a: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--base-url", base_url, "--model", model,
           "--mode", "sweep", "--slo", a.slo, "--sweep-start", str(a.sweep_start), "--sweep-step", str(a.sweep_step),
           "--sweep-max", str(a.sweep_max), "--sweep-failures", "1", "--duration", str(a.duration),
           "--warmup", str(a.warmup), "--input-tokens", str(a.input_tokens), "--output-tokens", str(a.output_tokens),
           "--progress-interval", "5", "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout stays pure JSON


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--mock", action="store_true", help="run against the simulated engine (loadtests/mockserver.py)")
    p.add_argument("--fleet", default=None, help="deploy this fleet spec first (corral up), stop it at the end")
    p.add_argument("--model-a", default="a")
    p.add_argument("--replicas-a", type=int, default=1)
    p.add_argument("--max-num-seqs-a", type=int, default=16)
    p.add_argument("--model-b", default="b")
    p.add_argument("--replicas-b", type=int, default=2)
    p.add_argument("--max-num-seqs-b", type=int, default=16)
    p.add_argument("--slo", default="ttft_p95=0.5,tpot_p95=0.05")
    p.add_argument("--sweep-start", type=float, default=4)
    p.add_argument("--sweep-step", type=float, default=2)
    p.add_argument("--sweep-max", type=float, default=60)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--out", default=f"benchmark-results/capacity-accuracy-{time.strftime('%Y%m%d-%H%M%S')}")
    a = p.parse_args()

    from corral.commands._plan_capacity import load_planner
    from corral.loadtests.mockserver import spawn

    out = Path(a.out)
    if a.fleet:
        from corral.commands.up import apply_fleet, run_down

        with contextlib.redirect_stdout(sys.stderr):
            run_down(None)
        apply_fleet(a.fleet, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr, flush=True))
    ctx = spawn(MOCK) if a.mock else contextlib.nullcontext(a.base_url)
    started = time.time()
    try:
        with ctx as base_url:
            sweep(base_url, a.model_a, out / "a", a)
            planner_a, _ = load_planner(str(out / "a"), a.slo, arm=a.model_a, replicas=a.replicas_a,
                                        max_num_seqs=a.max_num_seqs_a)
            predicted = planner_a.predict(replicas=a.replicas_b, max_num_seqs=a.max_num_seqs_b)
            sweep(base_url, a.model_b, out / "b", a)
    finally:
        if a.fleet:
            with contextlib.redirect_stdout(sys.stderr):
                run_down(None)
    planner_b, _ = load_planner(str(out / "b"), a.slo, arm=a.model_b, replicas=a.replicas_b,
                                max_num_seqs=a.max_num_seqs_b)
    measured_b = planner_b.lam.per_replica_rps * a.replicas_b
    error = (predicted.lambda_star_rps - measured_b) / measured_b
    result = {
        "slo": a.slo,
        "config_a": {"model": a.model_a, "replicas": a.replicas_a, "max_num_seqs": a.max_num_seqs_a,
                     "measured_lambda_star_rps": planner_a.lam.per_replica_rps * a.replicas_a},
        "config_b": {"model": a.model_b, "replicas": a.replicas_b, "max_num_seqs": a.max_num_seqs_b,
                     "predicted_lambda_star_rps": predicted.lambda_star_rps,
                     "measured_lambda_star_rps": measured_b, "measured_bracketed": planner_b.lam.bracketed},
        "prediction_error": error,
        "abs_error_within_8pct": abs(error) <= 0.08,
        "prediction_warnings": predicted.warnings,
        "sweep_step_rps": a.sweep_step,
        "mock": a.mock,
        "fleet": a.fleet,
        "wall_s": time.time() - started,
    }
    (out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    report = out / "b" / "report.html"
    report.write_text(report.read_text().replace(
        "</body>", f"<h2>Planner prediction accuracy</h2><p>Predicted λ* from config A ({a.model_a}, "
                   f"{a.replicas_a} replica(s), max_num_seqs {a.max_num_seqs_a}): {predicted.lambda_star_rps:.3f} rps; "
                   f"measured here: {measured_b:.3f} rps; error {error:+.1%}.</p></body>"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
