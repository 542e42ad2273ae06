"""Measured λ* and prediction errors of the committed capacity sweeps, nominal vs realised stage rates.

Reads the stage tables of `benchmarks/results/capacity_accuracy-tiny-2026-12-01.json` and
`capacity_accuracy-tiny-crossover-2026-12-01.json` (measures nothing) and prints JSON: every
sweep's λ* from the planner's isotonic fit (`loadtests.capacity.measured_lambda_star`) with each
stage at its nominal rate (as those sweeps were planned) and at its realised rate (its measured
requests / its 75 s measured window, what the planner uses now), and the prediction errors before
and after.

What the tables allow, and what they do not. A stage row carries its measured request count and
its SLO attainment, which is all the isotonic λ* needs, so the measured λ* are recomputed exactly.
A prediction also depends on the engine model fitted from per-request latencies, which these files
do not hold. With the queueing calibration at 1 (as the afternoon file states for every fit; assumed
for the crossover, whose A sweeps were also TPOT-bound), a prediction at another
max_num_seqs is min(λ*_A, Q_B): the latency bound, anchored to A's measured λ*, or the
uncalibrated slot-queue bound Q_B. Q_B is taken as committed where it was the smaller
(predicted < λ*_A). Where the latency bound decided (predicted = λ*_A), the new prediction is
min(λ*_A new, Q_B) with Q_B >= the old λ*_A: exact when A's λ* fell, else reported as a range.
The refit of the iteration-time model on realised rates (Little's-law batches) is not redone.

    python benchmarks/capacity_realised_rates.py > benchmarks/results/capacity_realised_rates-2026-12-02.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from corral.loadtests.capacity import StagePoint, measured_lambda_star

RESULTS = Path(__file__).resolve().parent / "results"
MEASURED_WINDOW_S = 75.0  # both files: "stages 75 s measured after 8 s warm-up"
TARGET = 0.95  # both files' SLO: ttft_p95=0.5,tpot_p95=0.06


def _points(stages: list[dict], realised: bool) -> list[StagePoint]:
    out = []
    for s in stages:
        nominal = float(s["stage"].split("=")[1])
        rate = s["requests"] / MEASURED_WINDOW_S if realised else nominal
        att = s["attainment"]
        ratio = s.get("attainment_ratio", min(a / TARGET for a in att.values()))
        missed = tuple(sorted(k.split("_")[0] for k, a in att.items() if a < TARGET))
        out.append(StagePoint(
            name=s["stage"], rate_rps=rate, rate_per_replica_rps=rate, attainment_ratio=ratio, met=ratio >= 1,
            ttft_median_s=0.0, itl_mean_s=0.0, itl_tail_ratio=1.0, tpot_mean_s=0.0, tpot_tail_ratio=1.0,
            decode_batch=0.0, in_flight=0.0, output_tokens_mean=0.0, input_tokens_mean=0.0,
            missed_metrics=missed if ratio < 1 else (), requests=s["requests"], offered_rate_rps=nominal))
    return sorted(out, key=lambda p: p.rate_rps)


def lambda_star(stages: list[dict], realised: bool) -> dict:
    try:
        lam = measured_lambda_star(_points(stages, realised))
    except ValueError as exc:
        return {"lambda_star_rps": None, "why": str(exc)}
    return {"lambda_star_rps": round(lam.per_replica_rps, 4), "bracketed": lam.bracketed,
            "last_met": lam.last_met, "first_missed": lam.first_missed}


def _realised_table(stages: list[dict]) -> list[dict]:
    return [{"stage": s["stage"], "requests": s["requests"], "realised_rate_rps": round(s["requests"] / MEASURED_WINDOW_S, 4),
             "realised_vs_nominal": round(s["requests"] / MEASURED_WINDOW_S / float(s["stage"].split("=")[1]) - 1, 3)}
            for s in stages]


def _predict(old_pred: float, old_a: float, new_a: float) -> tuple[float, float]:
    """(low, high) of the prediction with A's λ* moved from old_a to new_a (see the module docstring)."""
    if old_pred < old_a - 1e-3:  # the slot-queue bound Q_B = old_pred decided
        v = min(new_a, old_pred)
        return v, v
    if new_a <= old_a:  # the latency bound decided; Q_B >= old_a >= new_a
        return new_a, new_a
    return old_a, new_a  # Q_B is somewhere above old_a: the prediction lies between


def _error(pred: tuple[float, float], measured: float) -> list[float]:
    return sorted({round((p - measured) / measured, 4) for p in pred})


def _row(set_name: str, source: str, seqs: int, committed_pred: float, committed_a: float,
         a: dict[str, float], measured: dict[str, float]) -> dict:
    """One prediction, from the committed one moved to A's isotonic λ* at nominal and at realised
    rates, against B's isotonic λ* (mean over its usable sweeps) at the same kind of rates."""
    pred = {k: _predict(committed_pred, committed_a, a[k]) for k in a}
    return {"set": set_name, "from": source, "max_num_seqs": seqs,
            "committed": {"A_lambda_star_rps": round(committed_a, 4), "predicted_rps": round(committed_pred, 4)},
            "A_lambda_star_rps": a, "predicted_rps": {k: sorted({round(x, 4) for x in v}) for k, v in pred.items()},
            "measured_mean_rps": {k: round(v, 4) for k, v in measured.items()},
            "error": {k: _error(pred[k], measured[k]) for k in a}}


def main() -> int:
    tiny = json.loads((RESULTS / "capacity_accuracy-tiny-2026-12-01.json").read_text())
    cross = json.loads((RESULTS / "capacity_accuracy-tiny-crossover-2026-12-01.json").read_text())
    sweeps = {f"tiny {k}": v["stages"] for k, v in tiny["sweeps"].items()}
    sweeps |= {f"crossover {k}": v for k, v in cross["sweeps"].items()}
    lam = {k: {"nominal": lambda_star(v, False), "realised": lambda_star(v, True), "stages": _realised_table(v)}
           for k, v in sweeps.items()}

    def get(key: str, kind: str) -> float | None:
        return lam[key][kind]["lambda_star_rps"]

    predictions = []
    # 2026-12-01 afternoon: each A sweep predicts max_num_seqs 2 and 3; measured = mean of B's usable sweeps.
    b_keys = {2: ["tiny seqs2 run 1 (18:44 UTC)", "tiny seqs2 run 2 (18:56 UTC)"],
              3: ["tiny seqs3 run 1 (19:04 UTC)", "tiny seqs3 run 2 (19:14 UTC)"]}
    for p in tiny["predictions"]:
        a_key = f"tiny {p['from']}"
        meas = {kind: [x for x in (get(k, kind) for k in b_keys[p["max_num_seqs"]]) if x is not None]
                for kind in ("nominal", "realised")}
        predictions.append(_row("2026-12-01 afternoon", p["from"], p["max_num_seqs"], p["predicted_rps"],
                                p["A_lambda_star_rps"], {k: get(a_key, k) for k in ("nominal", "realised")},
                                {k: statistics.fmean(v) for k, v in meas.items()}))
    # 2026-12-01 evening crossover: A on one core predicts B (max_num_seqs 3) on the same core.
    for core, a_key, b_list in (("core0", "crossover run1 A (seqs8, core 0)", ["crossover run2 B (seqs3, core 0)"]),
                                ("core1", "crossover run2 A (seqs8, core 1)",
                                 ["crossover run1 B (seqs3, core 1)", "crossover run1 B2 (seqs3, core 1)"])):
        c = cross["crossover"][core]
        predictions.append(_row("2026-12-01 evening crossover", core, 3, c["config_b"]["predicted_lambda_star_rps"],
                                c["config_a"]["measured_lambda_star_rps"],
                                {k: get(a_key, k) for k in ("nominal", "realised")},
                                {k: statistics.fmean(get(b, k) for b in b_list) for k in ("nominal", "realised")}))

    def summary(kind: str, pick) -> dict:
        errs = [abs(pick(p["error"][kind])) for p in predictions]
        signed = [pick(p["error"][kind]) for p in predictions]
        return {"median_abs_error": round(statistics.median(errs), 4), "max_abs_error": round(max(errs), 4),
                "within_8pct": sum(e <= 0.08 for e in errs), "predictions": len(errs),
                "mean_signed_error": round(statistics.fmean(signed), 4)}

    # A ranged prediction counts with its error furthest from 0.
    worst = lambda e: max(e, key=abs)  # noqa: E731
    out = {
        "benchmark": "capacity_realised_rates",
        "inputs": ["benchmarks/results/capacity_accuracy-tiny-2026-12-01.json",
                   "benchmarks/results/capacity_accuracy-tiny-crossover-2026-12-01.json"],
        "method": __doc__.split("\n\n")[1].replace("\n", " ") + " " + __doc__.split("\n\n")[2].replace("\n", " "),
        "measured_window_s": MEASURED_WINDOW_S,
        "summary": {"nominal_rates": summary("nominal", worst), "realised_rates": summary("realised", worst)},
        "predictions": predictions,
        "lambda_star": lam,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
