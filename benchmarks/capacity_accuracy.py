"""Prediction accuracy of `corral plan capacity` (goal: median |error| <= 8 %, 95 % interval half-width <= 4 %).

The protocol: fit the planner (its engine model, `corral.common.engine_model`) on one
configuration A, predict λ* (the highest rate meeting the SLO) at >= 3 held-out configurations
(two other max_num_seqs, one other prompt/output mix, a replica count where cores allow), and
measure them. Two modes:

**Live** (`--fleet` or `--base-url`): every configuration is an arm of one fleet (pinned by arm
name) with its own lengths; the sweeps run in A-B-B-A blocks (A, H1, H2, H3, then H3, H2, H1, A,
`--blocks` times) so slow drift of the machine cancels between configurations, all on one seed
(every configuration meets the same arrivals at a given rate). `--loadgen-cpus` pins the load
generator (`taskset`) away from the engines' cores. Requests per stage: a p95 verdict from n
requests has a standard error of sqrt(0.05 x 0.95 / n): 2 points at 120 requests, 1 point at
475. Near λ* a stage needs >= 475 measured requests for the attainment's noise (1 point) to
stay below the width of the SLO margin it decides; at ~2 rps that is a 240 s stage
(`--duration 240`). Each prediction from each A sweep is judged against the mean of that
configuration's sweeps; the 95 % interval of the median error is a bootstrap over sweeps.

    python benchmarks/capacity_accuracy.py --fleet benchmarks/fleets/capacity-accuracy-tiny-seqs3.yaml \
        --fit seqs8:8 --held-out seqs3:3 --held-out seqs2:2 --held-out seqs8:8:1:128:16 \
        --slo ttft_p95=0.5,tpot_p95=0.06 --sweep 1.5:0.25:4 --duration 240 --warmup 8 \
        --input-tokens 64 --output-tokens 16 --blocks 2 --loadgen-cpus 1

(config = ARM:MAX_NUM_SEQS[:REPLICAS[:INPUT_TOKENS:OUTPUT_TOKENS]]). `--mock` runs the same
protocol against the mock server (its batched arms run the same engine model: a self-check).

**Committed** (`--committed`): measures nothing. The sweeps committed in
`benchmarks/results/capacity_accuracy-tiny-2026-12-01.json` and `...-crossover-2026-12-01.json`
hold per stage only its measured request count and its SLO attainment per clause (no per-request
latencies, no engine iteration records). So the engine model is fitted to what they hold: its
step coefficients and host overhead chosen (Nelder-Mead) so that replaying each stage of an A
sweep (Poisson arrivals with the stage's measured count in its 75 s window, after 8 s of
warm-up) reproduces the stage's TTFT and TPOT attainments; then each held-out sweep of the same
result file (max_num_seqs 2 and 3) is predicted by replay and judged with the same SLO code and
isotonic λ*. Printed: each prediction, anchored (measured λ*_A x model λ*_B / model λ*_A) and
the replay alone, the median |error| per configuration and over all, with bootstrap 95 % intervals.

    python benchmarks/capacity_accuracy.py --committed > benchmarks/results/capacity_accuracy-engine-model-2026-12-02.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from corral.common.engine_model import (
    EngineModel,
    SchedulerLimits,
    StepModel,
    poisson_schedule,
    replay,
)
from corral.loadtests.capacity import StagePoint, measured_lambda_star, stage_points
from corral.loadtests.metrics import RequestRecord
from corral.loadtests.planning import ITERATIONS_FILE
from corral.loadtests.slo import parse_slo

RESULTS = Path(__file__).resolve().parent / "results"
MOCK = {"arms": [
    {"name": "a", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.003, "prefill_per_token_s": 0.0001,
     "max_num_seqs": 16},
    {"name": "b", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.003, "prefill_per_token_s": 0.0001,
     "max_num_seqs": 4},
    {"name": "c", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.003, "prefill_per_token_s": 0.0001,
     "max_num_seqs": 8},
    {"name": "a2", "mode": "batched", "step_base_s": 0.010, "step_per_seq_s": 0.003, "prefill_per_token_s": 0.0001,
     "max_num_seqs": 16, "replicas": 2},
]}


# ------------------------------------------------------------------ statistics


def bootstrap_median_ci(values: list[float], seed: int = 0, n: int = 4000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    arr = np.array(values)
    meds = np.median(rng.choice(arr, size=(n, len(arr)), replace=True), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


# ---------------------------------------------------------- committed sweeps

WINDOW_S, WARMUP_S, PROMPT, OUTPUT = 75.0, 8.0, 64, 16
SLO = "ttft_p95=0.5,tpot_p95=0.06"


def _stage_arrivals(stage: dict, index: int, rate_factor: float = 1.0):
    """A committed stage's arrivals: its measured count in the 75 s window (Poisson conditioned on
    the count) after an 8 s warm-up at its nominal rate; seeded by its nominal rate, so every
    configuration meets the same arrivals at the same rate."""
    nominal = float(stage["stage"].split("=")[1])
    seed = int(round(nominal * 1000))
    warm = poisson_schedule(nominal * rate_factor, WARMUP_S, PROMPT, OUTPUT, seed=seed + 1)
    main = poisson_schedule(nominal * rate_factor, WINDOW_S, PROMPT, OUTPUT, seed=seed,
                            count=round(stage["requests"] * rate_factor))
    arrivals = warm + [type(a)(a.arrival_s + WARMUP_S, a.prompt_tokens, a.output_tokens) for a in main]
    return arrivals, [False] * len(warm) + [True] * len(main)


def _replay_point(arrivals, measured, model: EngineModel, seqs: int, name: str, clauses) -> StagePoint | None:
    timings = replay(arrivals, model, SchedulerLimits(max_num_seqs=seqs))
    recs = [RequestRecord(i, stage=name, phase="measure" if m else "warmup", sent_s=t.arrival_s, ttft_s=t.ttft_s,
                          e2e_s=t.e2e_s, itl_s=t.itl_s, tpot_s=t.tpot_s, input_tokens=t.prompt_tokens,
                          output_tokens=t.output_tokens) for i, (t, m) in enumerate(zip(timings, measured))]
    pts = stage_points([(name, None, WINDOW_S, recs)], clauses, 1)
    return pts[0] if pts else None


def _model(theta: np.ndarray) -> EngineModel:
    base, dec, pf, host = (float(x) for x in np.exp(theta))
    return EngineModel(StepModel(base, dec, pf), host)


def fit_to_attainment(stages: list[dict], seqs: int, clauses) -> tuple[EngineModel, float]:
    """The engine model whose replay reproduces the stages' attainments (least squares over
    stages and clauses, Nelder-Mead on log-parameters)."""
    from scipy.optimize import minimize

    prepared = [(s, *_stage_arrivals(s, i)) for i, s in enumerate(stages)]

    def loss(theta: np.ndarray) -> float:
        model = _model(theta)
        err = 0.0
        for s, arrivals, measured in prepared:
            timings = replay(arrivals, model, SchedulerLimits(max_num_seqs=seqs))
            recs = [RequestRecord(i, ttft_s=t.ttft_s, e2e_s=t.e2e_s, itl_s=t.itl_s, tpot_s=t.tpot_s,
                                  output_tokens=t.output_tokens)
                    for i, (t, m) in enumerate(zip(timings, measured)) if m]
            for c in clauses:
                err += ((c.attainment(recs) or 0.0) - s["attainment"][c.key]) ** 2
        return err

    # The loss is flat where every stage meets the SLO (all attainments 1): start Nelder-Mead
    # from the best point of a coarse grid of step costs (prefill 0.2 ms/token, 50 ms host).
    grid = [np.log([b, d, 0.0002, 0.05]) for b in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)
            for d in (0.001, 0.002, 0.004, 0.006, 0.008, 0.011, 0.015)]
    x0 = min(grid, key=loss)
    best = minimize(loss, x0, method="Nelder-Mead", options={"xatol": 0.01, "fatol": 1e-6, "maxfev": 200})
    return _model(best.x), float(best.fun)


def model_lambda(stages_like: list[dict], model: EngineModel, seqs: int, clauses) -> float:
    """The replay's isotonic λ* over a ladder of rates: the nominal rates of `stages_like`, then
    upward in their step until two rates in a row miss (each rate's arrivals as `_stage_arrivals`)."""
    rates = sorted({float(s["stage"].split("=")[1]) for s in stages_like})
    step = statistics.median([b - a for a, b in zip(rates, rates[1:])]) if len(rates) > 1 else rates[0] / 4
    points: list[StagePoint] = []
    misses, k, r = 0, 0, rates[0]
    ladder = list(rates)
    while misses < 2 and k < 80:
        if k >= len(ladder):
            ladder.append(ladder[-1] + step)
        r = ladder[k]
        k += 1
        stage = {"stage": f"rate={r:g}", "requests": round(r * WINDOW_S)}
        arrivals, measured = _stage_arrivals(stage, k)
        p = _replay_point(arrivals, measured, model, seqs, stage["stage"], clauses)
        if p is None:
            break
        points.append(p)
        if k > len(rates):
            misses = 0 if p.met else misses + 1
    points.sort(key=lambda q: q.rate_rps)
    while points and not points[0].met:  # the model misses already at the lowest rate: look lower
        low = points[0].rate_rps / 2
        stage = {"stage": f"rate={low:g}", "requests": max(3, round(low * WINDOW_S))}
        p = _replay_point(*_stage_arrivals(stage, 0), model, seqs, stage["stage"], clauses)
        if p is None or low < 0.01:
            return 0.0
        points.insert(0, p)
        if p.met:
            break
    try:
        return measured_lambda_star(points).per_replica_rps
    except ValueError:
        return 0.0


def committed() -> dict:
    clauses = parse_slo(SLO)
    tiny = json.loads((RESULTS / "capacity_accuracy-tiny-2026-12-01.json").read_text())
    cross = json.loads((RESULTS / "capacity_accuracy-tiny-crossover-2026-12-01.json").read_text())

    def realised(stages: list[dict]) -> float | None:
        pts = []
        for s in stages:
            att = s["attainment"]
            ratio = min(a / 0.95 for a in att.values())
            rate = s["requests"] / WINDOW_S
            pts.append(StagePoint(s["stage"], rate, rate, ratio, ratio >= 1, 0, 0, 1, 0, 1, 0, 0, OUTPUT, PROMPT,
                                  requests=s["requests"]))
        try:
            return measured_lambda_star(sorted(pts, key=lambda p: p.rate_rps)).per_replica_rps
        except ValueError:
            return None

    result_files = {
        "2026-12-01 afternoon": {
            "fit": {k: v["stages"] for k, v in tiny["sweeps"].items() if v["max_num_seqs"] == 8},
            "held_out": {2: {k: v["stages"] for k, v in tiny["sweeps"].items() if v["max_num_seqs"] == 2},
                         3: {k: v["stages"] for k, v in tiny["sweeps"].items() if v["max_num_seqs"] == 3}}},
        "2026-12-01 evening (crossover)": {
            "fit": {k: v for k, v in cross["sweeps"].items() if "seqs8" in k},
            "held_out": {3: {k: v for k, v in cross["sweeps"].items() if "seqs3" in k}}},
    }
    out: dict = {"benchmark": "capacity_accuracy", "mode": "committed sweeps (no new measurement)",
                 "slo": SLO, "load": "Poisson, 64 prompt / 16 output tokens (forced), 75 s measured after 8 s warm-up",
                 "inputs": ["benchmarks/results/capacity_accuracy-tiny-2026-12-01.json",
                            "benchmarks/results/capacity_accuracy-tiny-crossover-2026-12-01.json"],
                 "fits": [], "predictions": []}
    for result_file, data in result_files.items():
        held = {seqs: {k: (realised(st), st) for k, st in sweeps.items()} for seqs, sweeps in data["held_out"].items()}
        for name, stages in data["fit"].items():
            lam_a = realised(stages)
            if lam_a is None:
                continue
            t0 = time.time()
            model, loss = fit_to_attainment(stages, 8, clauses)
            model_a = model_lambda(stages, model, 8, clauses)
            out["fits"].append({"result_file": result_file, "sweep": name, "max_num_seqs": 8, "measured_lambda_star_rps": lam_a,
                                "engine_model": model.as_dict(), "attainment_sq_error": loss,
                                "model_lambda_star_rps": model_a, "fit_s": round(time.time() - t0, 1)})
            print(f"fit {result_file} {name}: λ*_A {lam_a:.3f}, model {model_a:.3f}, {model.as_dict()}", file=sys.stderr)
            for seqs, sweeps in held.items():
                measured = [lam for lam, _ in sweeps.values() if lam is not None]
                if not measured:
                    continue
                ladder = [s for _, st in sweeps.values() for s in st]
                model_b = model_lambda(ladder, model, seqs, clauses)
                anchored = lam_a * model_b / model_a if model_a > 0 else 0.0
                mean_b = sum(measured) / len(measured)
                out["predictions"].append({
                    "result_file": result_file, "fit_sweep": name, "max_num_seqs": seqs,
                    "A_lambda_star_rps": lam_a, "model_A_rps": model_a, "model_B_rps": model_b,
                    "predicted_rps": anchored, "measured_rps": measured, "measured_mean_rps": mean_b,
                    "error": (anchored - mean_b) / mean_b, "error_replay_alone": (model_b - mean_b) / mean_b,
                    "error_per_measurement": [(anchored - m) / m for m in measured]})
    summary = {}
    for key in ("error", "error_replay_alone"):
        per_conf = {}
        for seqs in (2, 3):
            errs = [p[key] for p in out["predictions"] if p["max_num_seqs"] == seqs]
            if errs:
                lo, hi = bootstrap_median_ci(errs)
                per_conf[f"max_num_seqs={seqs}"] = {
                    "predictions": len(errs), "median_error": statistics.median(errs),
                    "median_error_95ci": [lo, hi], "median_abs_error": statistics.median(abs(e) for e in errs),
                    "within_8pct": sum(abs(e) <= 0.08 for e in errs)}
        errs = [p[key] for p in out["predictions"]]
        lo, hi = bootstrap_median_ci([abs(e) for e in errs])
        summary[key] = {"per_configuration": per_conf, "median_abs_error": statistics.median(abs(e) for e in errs),
                        "median_abs_error_95ci": [lo, hi], "within_8pct": sum(abs(e) <= 0.08 for e in errs),
                        "predictions": len(errs)}
    out["summary"] = summary
    out["not_measured"] = ("No held-out length mix or replica count was measured in the committed sweeps (only "
                           "max_num_seqs 2 and 3 against 8); no engine iteration records or per-request latencies "
                           "were kept, so the model is fitted to stage attainments, not to engine steps.")
    return out


# ---------------------------------------------------------------------- live


def _config(text: str, a: argparse.Namespace) -> dict:
    parts = text.split(":")
    if len(parts) not in (2, 3, 5):
        raise SystemExit(f"configuration {text!r}: expected ARM:MAX_NUM_SEQS[:REPLICAS[:INPUT_TOKENS:OUTPUT_TOKENS]]")
    return {"arm": parts[0], "max_num_seqs": int(parts[1]), "replicas": int(parts[2]) if len(parts) > 2 else 1,
            "input_tokens": int(parts[3]) if len(parts) == 5 else a.input_tokens,
            "output_tokens": int(parts[4]) if len(parts) == 5 else a.output_tokens,
            "label": text}


def sweep(base_url: str, cfg: dict, out: Path, a: argparse.Namespace) -> None:
    start, step, top = (float(x) for x in a.sweep.split(":"))
    cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--base-url", base_url, "--model", cfg["arm"],
           "--mode", "sweep", "--slo", a.slo, "--sweep-start", str(start * cfg["replicas"]),
           "--sweep-step", str(step * cfg["replicas"]), "--sweep-max", str(top * cfg["replicas"]),
           "--sweep-failures", str(a.sweep_failures), "--duration", str(a.duration), "--warmup", str(a.warmup),
           "--input-tokens", str(cfg["input_tokens"]), "--output-tokens", str(cfg["output_tokens"]),
           "--seed", str(a.seed), "--progress-interval", "10", "--out", str(out)]
    if a.loadgen_cpus:
        cmd = ["taskset", "-c", a.loadgen_cpus, *cmd]
    started = time.time()
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # stdout stays pure JSON
    if a.iterations_file:
        kept = slice_iterations(Path(a.iterations_file), started, time.time(), out / ITERATIONS_FILE)
        print(f"{cfg['label']}: {kept} engine iteration records", file=sys.stderr, flush=True)


def slice_iterations(source: Path, start_unix: float, end_unix: float, dest: Path) -> int:
    """Copy the engine iteration records written between `start_unix` and `end_unix` (their
    `t_unix`) from the file every replica appends to (`CORRAL_ENGINE_ITERATIONS_FILE`) into a
    sweep's results folder, where `corral plan capacity` reads them. The protocol's sweeps run one
    at a time, each on its own arm, and an idle engine writes no records, so a sweep's window
    holds its own arm's iterations. Returns how many were copied (the file is written only then)."""
    if not source.exists():
        return 0
    lines = []
    for line in source.read_text().splitlines():
        try:
            t = float(json.loads(line)["t_unix"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a replica being stopped mid-write
        if start_unix <= t <= end_unix:
            lines.append(line)
    if lines:
        dest.write_text("\n".join(lines) + "\n")
    return len(lines)


def live(a: argparse.Namespace) -> dict:
    from corral.loadtests.mockserver import spawn
    from corral.loadtests.planning import PlanningInputError, load_planner

    fit = _config(a.fit, a)
    held = [_config(h, a) for h in a.held_out]
    if len(held) < 1:
        raise SystemExit("give at least one --held-out configuration (the protocol asks for three)")
    out = Path(a.out)
    order = [fit, *held]
    blocks = []
    for b in range(a.blocks):
        blocks += [(b, c) for c in (order if b % 2 == 0 else order[::-1])]  # A-B-B-A
    deploy = bool(a.fleet) and not a.reuse
    if deploy:
        from corral.serving.fleet_ops import apply_fleet, stop_fleet
        from corral.serving.llm_server import ITERATIONS_ENV

        if a.iterations_file:  # the replicas append their engines' iterations there
            os.environ[ITERATIONS_ENV] = str(Path(a.iterations_file).resolve())

        with contextlib.redirect_stdout(sys.stderr):
            stop_fleet()
        apply_fleet(a.fleet, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr, flush=True))
    ctx = spawn(MOCK) if a.mock and not a.reuse else contextlib.nullcontext(a.base_url)
    dirs: dict[str, list[Path]] = {c["label"]: [] for c in order}
    try:
        with ctx as base_url:
            for b, c in blocks:
                d = out / f"{c['label'].replace(':', '_')}-block{b}"
                if not a.reuse:
                    sweep(base_url, c, d, a)
                dirs[c["label"]].append(d)
    finally:
        if deploy:
            with contextlib.redirect_stdout(sys.stderr):
                stop_fleet()

    def measured(c: dict, d: Path) -> float | None:
        try:
            return load_planner(str(d), a.slo, arm=c["arm"], replicas=c["replicas"],
                                max_num_seqs=c["max_num_seqs"])[0].lam.per_replica_rps * c["replicas"]
        except PlanningInputError:
            return None

    lams = {c["label"]: [m for m in (measured(c, d) for d in dirs[c["label"]]) if m is not None] for c in held}
    preds = []
    for d in dirs[fit["label"]]:
        planner, _ = load_planner(str(d), a.slo, arm=fit["arm"], replicas=fit["replicas"],
                                  max_num_seqs=fit["max_num_seqs"])
        for c in held:
            if not lams[c["label"]]:
                continue
            p = planner.predict(c["replicas"], c["max_num_seqs"], c["input_tokens"], c["output_tokens"])
            mean = sum(lams[c["label"]]) / len(lams[c["label"]])
            preds.append({"fit_sweep": d.name, "fit_source": planner.fit_source, "engine_model": planner.engine.as_dict(),
                          "fit_measured_rps": planner.lam.per_replica_rps * fit["replicas"],
                          "config": c["label"], "predicted_rps": p.lambda_star_rps,
                          "replay_alone_rps": p.model_lambda_star_rps, "measured_rps": lams[c["label"]],
                          "error": (p.lambda_star_rps - mean) / mean, "warnings": p.warnings})
    errs = [p["error"] for p in preds]
    lo, hi = bootstrap_median_ci([abs(e) for e in errs]) if errs else (None, None)
    return {"benchmark": "capacity_accuracy", "mode": "mock" if a.mock else "live", "slo": a.slo,
            "fit": fit, "held_out": held, "blocks": a.blocks, "order": [c["label"] for _, c in blocks],
            "stage_s": a.duration, "warmup_s": a.warmup, "seed": a.seed, "loadgen_cpus": a.loadgen_cpus,
            "iterations_file": a.iterations_file,
            "predictions": preds, "median_abs_error": statistics.median([abs(e) for e in errs]) if errs else None,
            "median_abs_error_95ci": [lo, hi]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--committed", action="store_true", help="evaluate on the committed sweeps (measures nothing)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--mock", action="store_true", help="run the protocol against the mock server")
    p.add_argument("--fleet", default=None, help="deploy this fleet spec first (corral up), stop it at the end")
    p.add_argument("--fit", default="a:16", help="ARM:MAX_NUM_SEQS[:REPLICAS[:IN:OUT]] the planner is fitted on")
    p.add_argument("--held-out", action="append", default=None,
                   help="a held-out configuration, as --fit (repeat; the protocol asks for >= 3)")
    p.add_argument("--slo", default="ttft_p95=0.5,tpot_p95=0.05")
    p.add_argument("--sweep", default="4:2:60", metavar="START:STEP:MAX", help="per-replica rates of every sweep")
    p.add_argument("--blocks", type=int, default=2, help="A-B-B-A blocks (each measures every configuration once)")
    p.add_argument("--seed", type=int, default=0, help="one arrival seed for every configuration")
    p.add_argument("--loadgen-cpus", default=None, help="pin the load generator to these CPUs (taskset -c)")
    p.add_argument("--iterations-file", default=None,
                   help="the engines' iteration records (CORRAL_ENGINE_ITERATIONS_FILE; set for the replicas with "
                        "--fleet): each sweep's are copied into its results folder, so the planner fits its step "
                        "model to them (the arms need engine.extra enable_logging_iteration_details)")
    p.add_argument("--reuse", action="store_true", help="measure nothing: evaluate the sweeps already in --out")
    p.add_argument("--sweep-failures", type=int, default=2)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--out", default=f"benchmark-results/capacity-accuracy-{time.strftime('%Y%m%d-%H%M%S')}")
    a = p.parse_args()
    if a.held_out is None:
        a.held_out = ["b:4", "c:8", "a2:16:2"] if a.mock else []  # a2: arm a's engine, two replicas
    started = time.time()
    result = committed() if a.committed else live(a)
    result["wall_s"] = round(time.time() - started, 1)
    if not a.committed:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
