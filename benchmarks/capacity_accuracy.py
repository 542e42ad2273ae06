"""Prediction accuracy of `corral plan capacity` (goal: error <= 8 %).

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
The tiny random-weight model, whose 75 s stages hold 100-175 requests near λ* here (B measured twice):
    python benchmarks/capacity_accuracy.py --fleet benchmarks/fleets/capacity-accuracy-tiny-seqs3.yaml \
        --model-a seqs8 --max-num-seqs-a 8 --model-b seqs3 --max-num-seqs-b 3 --replicas-b 1 \
        --slo ttft_p95=0.5,tpot_p95=0.06 --sweep-start 1.5 --sweep-step 0.25 --sweep-max 4 \
        --sweep-b 1.5:0.125:3.5 --repeat-b 2 --duration 75 --warmup 8 --input-tokens 64 --output-tokens 16
Re-evaluate the planner on sweeps already measured (after a planner change): add --reuse OUT.
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


def sweep(base_url: str, model: str, out: Path, a: argparse.Namespace, rates: tuple[float, float, float]) -> None:
    start, step, top = rates
    cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--base-url", base_url, "--model", model,
           "--mode", "sweep", "--slo", a.slo, "--sweep-start", str(start), "--sweep-step", str(step),
           "--sweep-max", str(top), "--sweep-failures", str(a.sweep_failures), "--duration", str(a.duration),
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
    p.add_argument("--sweep-b", default=None, metavar="START:STEP:MAX",
                   help="B's sweep, when its λ* lies elsewhere than A's (default: A's sweep)")
    p.add_argument("--repeat-b", type=int, default=1,
                   help="measure B's λ* this many times: the spread is the measurement's own noise")
    p.add_argument("--reuse", default=None, metavar="DIR",
                   help="measure nothing: evaluate the planner on the sweeps already in DIR (a, b, b2, ...), "
                        "e.g. after a planner change")
    p.add_argument("--sweep-failures", type=int, default=2,
                   help="a sweep stops after this many consecutive stages that miss the SLO")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--out", default=f"benchmark-results/capacity-accuracy-{time.strftime('%Y%m%d-%H%M%S')}")
    a = p.parse_args()
    rates_a = (a.sweep_start, a.sweep_step, a.sweep_max)
    rates_b = tuple(float(x) for x in a.sweep_b.split(":")) if a.sweep_b else rates_a
    if len(rates_b) != 3 or a.repeat_b < 1:
        p.error(f"--sweep-b must be START:STEP:MAX (got {a.sweep_b!r}) and --repeat-b >= 1 (got {a.repeat_b})")

    from corral.loadtests.mockserver import spawn
    from corral.loadtests.planning import PlanningInputError, load_planner

    out = Path(a.reuse or a.out)
    measure = not a.reuse
    if measure:
        dirs_b = [out / ("b" if i == 0 else f"b{i + 1}") for i in range(a.repeat_b)]
    else:  # b, b2, b3, ... as a previous run wrote them
        dirs_b = sorted((d for d in out.glob("b*") if (d / "summary.json").exists()), key=lambda d: (len(d.name), d.name))
    deploy = bool(a.fleet) and measure
    if deploy:
        from corral.serving.fleet_ops import apply_fleet, stop_fleet

        with contextlib.redirect_stdout(sys.stderr):
            stop_fleet()
        apply_fleet(a.fleet, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr, flush=True))
    ctx = spawn(MOCK) if a.mock and measure else contextlib.nullcontext(a.base_url)
    started = time.time()
    try:
        with ctx as base_url:
            if measure:
                sweep(base_url, a.model_a, out / "a", a, rates_a)
                for d in dirs_b:
                    sweep(base_url, a.model_b, d, a, rates_b)
    finally:
        if deploy:
            with contextlib.redirect_stdout(sys.stderr):
                stop_fleet()
    planner_a, _ = load_planner(str(out / "a"), a.slo, arm=a.model_a, replicas=a.replicas_a,
                                max_num_seqs=a.max_num_seqs_a)
    predicted = planner_a.predict(replicas=a.replicas_b, max_num_seqs=a.max_num_seqs_b)
    lams_b, unusable = [], {}
    for d in dirs_b:
        try:
            lams_b.append(load_planner(str(d), a.slo, arm=a.model_b, replicas=a.replicas_b,
                                       max_num_seqs=a.max_num_seqs_b)[0].lam)
        except PlanningInputError as exc:  # e.g. a noisy first stage missed the SLO: that sweep measured no λ*
            unusable[d.name] = str(exc)
    if not lams_b:
        raise SystemExit(f"no sweep of B measured a λ*: {unusable}")
    each_b = [lam.per_replica_rps * a.replicas_b for lam in lams_b]
    # With repeats, the prediction is judged against their mean; each run's error is listed too.
    measured_b = sum(each_b) / len(each_b)
    error = (predicted.lambda_star_rps - measured_b) / measured_b
    result = {
        "slo": a.slo,
        "config_a": {"model": a.model_a, "replicas": a.replicas_a, "max_num_seqs": a.max_num_seqs_a,
                     "measured_lambda_star_rps": planner_a.lam.per_replica_rps * a.replicas_a},
        "config_b": {"model": a.model_b, "replicas": a.replicas_b, "max_num_seqs": a.max_num_seqs_b,
                     "predicted_lambda_star_rps": predicted.lambda_star_rps,
                     "measured_lambda_star_rps": measured_b,
                     "measured_runs_rps": each_b,
                     "measured_spread": (max(each_b) - min(each_b)) / measured_b,
                     "measured_bracketed": all(lam.bracketed for lam in lams_b),
                     "unusable_runs": unusable},
        "prediction_error": error,
        "prediction_error_per_run": [(predicted.lambda_star_rps - m) / m for m in each_b],
        "abs_error_within_8pct": abs(error) <= 0.08,
        "prediction_warnings": predicted.warnings,
        "sweeps": {"a": rates_a, "b": rates_b, "stage_s": a.duration, "warmup_s": a.warmup,
                   "stop_after_failed_stages": a.sweep_failures},
        "mock": a.mock,
        "fleet": a.fleet if deploy else None,
        "reused_sweeps": a.reuse,
        "wall_s": time.time() - started,
    }
    (out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    report = out / "b" / "report.html"
    report.write_text(report.read_text().replace(
        "</body>", f"<h2>Planner prediction accuracy</h2><p>Predicted λ* from config A ({a.model_a}, "
                   f"{a.replicas_a} replica(s), max_num_seqs {a.max_num_seqs_a}): {predicted.lambda_star_rps:.3f} rps; "
                   f"measured here: {measured_b:.3f} rps (mean of {len(each_b)} sweep(s)); "
                   f"error {error:+.1%}.</p></body>"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
