"""Where corral's autoscaling policy loses, per member of the workload family, from the
simulator's own traces, and what knowing the present load alone buys.

For each member (the reference's draw, at its seed and length, and its oracle headroom) it runs corral's
policy (the current setting: the spec's defaults, the curve's knee as batch target and its
engine model, as `benchmarks/autoscaler_sim.py` sets them) and the
reference oracle, and reports:

* the misses (requests over the SLO), split by the clause they break (TTFT, ITL) and by whether
  the fleet was then under-provisioned (ready replicas below what the oracle's plan asks for at
  that moment) or not;
* the replica-seconds above and below the oracle's plan (target replicas, second by second) and
  the peak target of each;
* the **reactive reference** (`ReactivePolicy`): the oracle's plan without its foresight: at
  each moment it asks for what the next `window_s` (10 s) of load needs, knowing that load exactly,
  times a headroom (multiples of the reference oracle's headroom on that member), keeps the
  highest of those asks for a memory of M seconds, and the replicas it adds serve a cold start
  later. Over the grid of headrooms x memories it traces what sizing from the load seen so far
  can trade: per member, the best attainment at <= 1.15x the oracle's replica-seconds and the
  fewest replica-seconds reaching the goal's attainment bar (`reactive_frontier`). It knows
  more than any real policy (the present load without lag, 10 s ahead) but not when the next
  burst starts; where no point of the grid meets the bar within 1.15x, meeting the goal there
  takes foresight of the bursts (or a reference that has none).

    python benchmarks/autoscaler_sim_losses.py REFERENCE_RESULT_JSON [--workloads a,b] [--headrooms 1,1.5,2,3,4]
        [--memories 0,60,180,300,600,1200] [--out FILE]
    python benchmarks/autoscaler_sim_losses.py --summarize OUT1.json OUT2.json ...   (several draws, markdown)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace

import numpy as np


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def per_second(timeline: dict[str, list[float]], key: str, end_s: float) -> np.ndarray:
    """A timeline series held between ticks, sampled at every whole second up to `end_s`."""
    t, v = np.asarray(timeline["t"]), np.asarray(timeline[key], dtype=float)
    idx = np.clip(np.searchsorted(t, np.arange(int(end_s) + 1), side="right") - 1, 0, len(v) - 1)
    return v[idx]


def frontier(points: list[dict], bar: float, corral: dict) -> dict:
    """What a grid of reactive plans reaches on one member, against the goal's attainment bar
    and cost cap (replica-seconds vs the oracle's): the best attainment within the cap, the
    cheapest point at the bar, corral's replica-seconds against that cheapest point, and the
    cheapest point at least as good as corral on both (None: corral is on or beyond the grid's
    frontier)."""
    from corral.autoscaler.sim.evaluate import GOAL_COST_VS_ORACLE

    cap = GOAL_COST_VS_ORACLE
    within = [p for p in points if p["replica_seconds_vs_oracle"] <= cap]
    at_bar = [p for p in points if p["slo_attainment"] >= bar]
    best = max(within, key=lambda p: (p["slo_attainment"], -p["replica_seconds_vs_oracle"]), default=None)
    cheapest = min(at_bar, key=lambda p: (p["replica_seconds_vs_oracle"], -p["slo_attainment"]), default=None)
    as_good = [p for p in points if p["slo_attainment"] >= corral["slo_attainment"]
               and p["replica_seconds_vs_oracle"] <= corral["replica_seconds_vs_oracle"]]
    dominating = min(as_good, key=lambda p: (p["replica_seconds_vs_oracle"], -p["slo_attainment"]), default=None)
    return {
        "attainment_bar": round(bar, 5), "cost_cap_vs_oracle": cap,
        "meets_bar_within_cap": bool(best is not None and best["slo_attainment"] >= bar),
        "best_within_cap": best, "cheapest_at_bar": cheapest,
        "corral_replica_seconds_vs_cheapest_at_bar": (
            round(corral["replica_seconds_vs_oracle"] / cheapest["replica_seconds_vs_oracle"], 3) if cheapest else None),
        "corral_meets_bar": corral["slo_attainment"] >= bar,
        "cheapest_as_good_as_corral": dominating,
    }


def summarize(reports: list[dict]) -> str:
    """Per member, over the draws of several outputs of this script: on how many draws some
    reactive plan meets the attainment bar within the cost cap, the range of the best attainment
    within the cap and of the fewest replica-seconds at the bar, corral's figures, and on how many
    draws a point of the grid is as good as corral on both. The recorded trace's halves are the
    same at every seed: counted once."""
    def span(values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        lo, hi = fmt % min(values), fmt % max(values)
        return lo if lo == hi else f"{lo}-{hi}"

    rows = ["| workload | draws | a reactive plan meets the bar within the cap | its best attainment within the cap | "
            "its fewest replica-s at the bar, vs oracle | corral | a reactive plan as good as corral on both |",
            "|---|---|---|---|---|---|---|"]
    names = list(dict.fromkeys(n for r in reports for n in r["workloads"]))
    for name in names:
        rows_of = [r["workloads"][name] for r in reports if name in r["workloads"]]
        if name.startswith("conversation"):
            rows_of = rows_of[:1]
        fronts = [w["reactive_frontier"] for w in rows_of]
        best = [100 * f["best_within_cap"]["slo_attainment"] for f in fronts if f["best_within_cap"]]
        cheapest = [f["cheapest_at_bar"]["replica_seconds_vs_oracle"] for f in fronts if f["cheapest_at_bar"]]
        never = len(fronts) - len(cheapest)
        n = len(fronts)
        rows.append(
            f"| {name} | {n} | {sum(f['meets_bar_within_cap'] for f in fronts)} of {n} | {span(best, '%.1f%%')} | "
            f"{span(cheapest, '%.2fx')}{f' (never on {never})' if never else ''} | "
            f"{span([100 * w['corral']['slo_attainment'] for w in rows_of], '%.1f%%')} at "
            f"{span([w['corral']['replica_seconds_vs_oracle'] for w in rows_of], '%.2fx')} | "
            f"{sum(f['cheapest_as_good_as_corral'] is not None for f in fronts)} of {n} |")
    # One setting for every member-draw: the grid point as good as corral on both (attainment and
    # replica-seconds) on the most of them, and on how many it is worse on both (0.1 point / 1 %).
    as_good: dict[tuple[float, float], int] = {}
    worse: dict[tuple[float, float], int] = {}
    member_draws = 0
    for name in names:
        rows_of = [r["workloads"][name] for r in reports if name in r["workloads"]]
        for w in rows_of[:1] if name.startswith("conversation") else rows_of:
            member_draws += 1
            c = w["corral"]
            for p in w["reactive_reference"]:
                key = (p["headroom"], p["memory_s"])
                as_good[key] = as_good.get(key, 0) + (p["slo_attainment"] >= c["slo_attainment"]
                                                      and p["replica_seconds_vs_oracle"] <= c["replica_seconds_vs_oracle"])
                worse[key] = worse.get(key, 0) + (p["slo_attainment"] < c["slo_attainment"] - 1e-3
                                                  and p["replica_seconds_vs_oracle"] > 0.99 * c["replica_seconds_vs_oracle"])
    if as_good:
        best = max(as_good, key=lambda k: (as_good[k], -worse[k]))
        rows.append(f"\nOne setting, headroom {best[0]:g} x {best[1]:g} s: as good as corral on both on {as_good[best]} of "
                    f"{member_draws} member-draws, worse on both on {worse[best]}.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", nargs="+",
                    help="a result.json of benchmarks/autoscaler_sim.py (its judging draws); with --summarize, "
                         "outputs of this script (one per draw)")
    ap.add_argument("--summarize", action="store_true",
                    help="measure nothing: sum the reactive frontiers of these outputs per member (markdown table)")
    ap.add_argument("--workloads", default=None)
    ap.add_argument("--headrooms", default="1,1.5,2,3,4", help="headrooms of the reactive reference's plan, as multiples of the oracle's")
    ap.add_argument("--memories", default="0",
                    help="memories of the reactive reference (s): how long it keeps the highest replicas the load asked for")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize([json.loads(open(f).read()) for f in args.reference]))
        return 0
    if len(args.reference) != 1:
        ap.error("give one reference result.json (several only with --summarize)")
    args.reference = args.reference[0]
    warnings.simplefilter("ignore")
    import logging

    import ray.serve.config  # noqa: F401 - configures Ray's loggers; quieten them after

    from corral.autoscaler import sim as S
    from corral.autoscaler.sim.family import family
    from corral.cluster.spec.autoscaling import AutoscalingSpec

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from autoscaler_sim import JUDGE_SEED, run_policy

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ref = json.loads(open(args.reference).read())
    curve = S.LatencyCurve.load(S.CURVES_DIR / "smollm2-135m-cpu1.json")
    knee = float(ref["knee_batch"])
    sim = S.SimConfig(ttft_slo_s=ref["slo"]["ttft_s"], itl_slo_s=ref["slo"]["itl_s"], max_num_seqs=ref["max_num_seqs"],
                      cold_start_s=ref["cold_start_s"], min_replicas=1, max_replicas=64)
    engine = {"engine_base_s": curve.step.base_s, "engine_per_decode_seq_s": curve.step.per_decode_seq_s,
              "engine_per_prefill_token_s": curve.step.per_prefill_token_s}  # as the benchmark sets them
    spec = AutoscalingSpec(target_ongoing_requests=knee, ttft_p95_s=sim.ttft_slo_s, itl_p95_s=sim.itl_slo_s,
                           cold_start_s=sim.cold_start_s, **engine, **ref.get("spec_overrides", {}))
    fam = family(ref.get("duration_s", 1800.0))  # the length of the reference's generated members
    names = args.workloads.split(",") if args.workloads else list(ref["workloads"])
    headrooms = [float(h) for h in args.headrooms.split(",")]
    memories = [float(m) for m in args.memories.split(",")]
    t0, out = time.time(), {}
    for name in names:
        r = ref["workloads"][name]
        requests = fam[name].requests(r.get("seed", JUDGE_SEED))  # the reference's draw
        oracle_policy = S.OraclePolicy(requests, curve, knee, sim.cold_start_s, headroom=r["oracle_headroom"])
        init = min(max(oracle_policy.initial(), sim.min_replicas), sim.max_replicas)
        msim = replace(sim, initial_replicas=init)
        oracle = S.run_oracle(requests, curve, msim, knee, r["oracle_headroom"])
        corral = run_policy("corral", requests, curve, msim, spec, knee)
        end = max(req.arrival_s for req in requests)
        c_target = per_second(corral.timeline, "target", end)
        c_ready = per_second(corral.timeline, "ready", end)
        o_target = per_second(oracle.timeline, "target", end)
        # What the load needs now (no foresight): the oracle's plan shifted back by its lead.
        lead = int(sim.cold_start_s)
        need_now = np.concatenate([o_target[lead:], np.full(lead, o_target[-1])])
        arrival = np.array([q.arrival_s for q in requests])
        sec = np.minimum(arrival.astype(int), len(c_ready) - 1)
        miss = ~corral.ok
        ttft_miss = np.nan_to_num(corral.ttft, nan=np.inf) > sim.ttft_slo_s
        itl_miss = np.nan_to_num(corral.itl, nan=np.inf) > sim.itl_slo_s
        under = c_ready[sec] < need_now[sec]
        row = {
            "corral": {"slo_attainment": round(corral.slo_attainment, 5),
                       "replica_seconds_vs_oracle": round(corral.replica_seconds / oracle.replica_seconds, 3)},
            "oracle": {"slo_attainment": round(oracle.slo_attainment, 5), "replica_seconds": round(oracle.replica_seconds)},
            "misses": int(miss.sum()),
            "misses_ttft": int(ttft_miss.sum()), "misses_itl": int(itl_miss.sum()),
            "misses_ttft_and_itl": int((ttft_miss & itl_miss).sum()),
            "misses_while_under_provisioned": int((miss & under).sum()),
            "requests_arriving_under_provisioned": int(under.sum()),
            "seconds_under_provisioned": int((c_ready < need_now).sum()),
            "target_replica_s_above_oracle_plan": round(float(np.clip(c_target - o_target, 0, None).sum())),
            "target_replica_s_below_oracle_plan": round(float(np.clip(o_target - c_target, 0, None).sum())),
            "peak_target": {"corral": int(c_target.max()), "oracle": int(o_target.max())},
        }
        bound = []
        for h in headrooms:
            for memory_s in memories:
                pol = S.ReactivePolicy(requests, curve, knee, headroom=h * r["oracle_headroom"], memory_s=memory_s)
                cfg = S.serve_config(sim.min_replicas, sim.max_replicas, init, knee, 0.0, 0.0, sim.look_back_period_s)
                res = S.simulate(requests, pol, cfg, msim, curve, f"reactive(x{h:g}, {memory_s:g}s)")
                bound.append({"headroom": h, "memory_s": memory_s, "slo_attainment": round(res.slo_attainment, 5),
                              "replica_seconds_vs_oracle": round(res.replica_seconds / oracle.replica_seconds, 3)})
        row["reactive_reference"] = bound
        row["reactive_frontier"] = frontier(bound, S.attainment_bar(r["feasible_attainment"]), row["corral"])
        out[name] = row
        log(f"{name} ({time.time() - t0:.0f}s): {json.dumps(row)}")
    seeds = sorted({ref["workloads"][n].get("seed", JUDGE_SEED) for n in names})
    report = {"benchmark": "autoscaler_sim_losses", "reference": args.reference, "seeds": seeds, "workloads": out,
              "elapsed_s": round(time.time() - t0, 1)}
    text = json.dumps(report, indent=1)
    if args.out:
        open(args.out, "w").write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
