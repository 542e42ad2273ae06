"""Benchmark: corral's autoscaling policy vs Ray Serve's default vs an offline oracle, on the
workload family (`corral.autoscaler.sim.family`).

All three run in one process over the same requests, through the same simulated Serve
controller (`corral.autoscaler.sim`). One setting for all: each policy's configuration is
chosen once and judged, unchanged, on every member of the family (generated members drawn with
another seed than the tuning draws). By default the setting is the capacity plan's: the spec's
defaults with the batch target at the latency curve's knee (what `corral plan capacity`
writes), for both policies, and the curve's engine model coefficients (`engine_*`, used by
corral's model-based knobs). With `--targets T1,T2,...` each policy's target is instead the
cheapest of those meeting the attainment bar on every member of the tuning set (the first half
of the Azure conversation trace and one draw of the x3 bursty MMPP; the best worst margin if
none does). Prints one JSON document (per workload:
attainment, replica-seconds vs the oracle and vs Ray's default, scale events, the verdict) and
writes one plot per workload (offered load; replicas vs load for each policy) to OUT_DIR.

    python benchmarks/autoscaler_sim.py OUT_DIR [--workloads a,b] [--targets 3,2.5,2] [--set FIELD=VALUE]
    (the committed runs: `nice -n 10 python benchmarks/autoscaler_sim.py OUT` and the same with `--targets 3,2.5,2`)
    python benchmarks/autoscaler_sim.py OUT --seed 5 --no-plots        (another held-out draw of every member)
    python benchmarks/autoscaler_sim.py OUT --candidate NAME:FIELD=VALUE --candidate-draws judging
        --reference seed-0.json --reference seed-2.json ...          (a candidate on several draws)
    python benchmarks/autoscaler_sim.py OUT --seed 5 --replica-mtbf-s 1800 --no-plots   (under replica faults)

With `--replica-mtbf-s` every policy of a draw (the oracle's calibration included) meets the same
fault process: serving replicas fail at random, their requests fail, and Serve replaces them
(`SimConfig.replica_mtbf_s`); the report records the MTBF, and candidates judged against such a
reference run under the same faults.

Candidate policy changes (`--candidate NAME:FIELD=VALUE,...`, with `--reference` a
result.json of this benchmark) are judged without re-running the oracle: each candidate and the
current setting run on every member's tuning draw (seed 0, paired: attainment and
replica-seconds) and on the reference's draws (its requests, goal verdict against its oracle and
Ray default figures). `--reference` may be repeated: references made with `--seed` 0, 2, 3, ...
judge candidates on several tuning draws, where a setting is chosen; references made with other
seeds judge the chosen one on held-out draws. Per member, the mean over the reference draws
decides: a candidate is kept only if it is better (attainment up at no more replica-seconds, or
replica-seconds down at no less attainment, within 0.1 point / 1 %) on a member and worse on none.
Beside it, per member, the paired verdict over the draws (`paired_over_draws`: 95% intervals of the
attainment difference and the replica-seconds ratio, a side taken only where an interval lies past
that tolerance), because a setting's figures move from draw to draw by more than most candidates
change them (a one-second change of a delay moves single draws by several points).
`--rejudge candidates.json` recomputes both verdicts from the draws a report holds.

The goal (`corral.autoscaler.sim.evaluate`): SLO attainment >= min(99 %, oracle's - 0.5 point),
replica-seconds <= 1.15x the oracle's, and better than Ray Serve's default policy. The oracle
is the cheapest offline plan reaching 99 % (the most generous tried where none can).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

TUNING = ("conversation-a", "mmpp-x3")
"""The tuning set: the members (at seed 0) on which each policy's setting is chosen."""
TUNING_SEED, JUDGE_SEED = 0, 1
TOLERANCE_PT, TOLERANCE_RATIO = 0.1, 0.01
"""What counts as a change in attainment (points) and in replica-seconds (share), for both verdicts."""
RULE_TEXT = (f"kept: better on a member and worse on none, by the draws' means (worse: attainment down more than "
             f"{TOLERANCE_PT:g} point or replica-seconds up more than {TOLERANCE_RATIO:.0%}; better: the reverse); "
             "better_at_95 / worse_at_95: the members where a 95% interval over the paired draws lies wholly beyond "
             "that tolerance on that side (better: and the other interval not beyond it on the worse side)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_policy(name: str, requests, curve, sim, spec, target: float):
    """One policy over the requests, configured as serving/app.py configures the arm."""
    from ray.serve.config import AutoscalingConfig

    from corral.autoscaler import sim as S
    from corral.autoscaler.policy import CorralAutoscalingPolicy
    from corral.cluster.spec.autoscaling import serve_autoscaling_config

    spec = spec.model_copy(update={"target_ongoing_requests": target})
    if name == "corral":
        d = serve_autoscaling_config(spec, arm="sim", min_replicas=sim.min_replicas, max_replicas=sim.max_replicas,
                                     initial_replicas=sim.initial_replicas, max_num_seqs=sim.max_num_seqs)
        return S.simulate(requests, CorralAutoscalingPolicy(**d["policy"]["policy_kwargs"]),
                          AutoscalingConfig(**d), sim, curve, "corral")
    # Ray's default policy as serving/app.py configures it without corral's policy: the same
    # target and the spec's delays.
    cfg = S.serve_config(sim.min_replicas, sim.max_replicas, sim.initial_replicas, target, spec.upscale_delay_s,
                         spec.downscale_delay_s, spec.look_back_period_s)
    return S.simulate(requests, S.ray_default_policy(), cfg, sim, curve, "ray_default")


class Member:
    """One workload drawn once, with its calibrated oracle and the fleet every policy starts from."""

    def __init__(self, workload, seed: int, curve, sim, oracle_target: float):
        from corral.autoscaler import sim as S

        self.workload, self.seed = workload, seed
        self.requests = workload.requests(seed)
        self.oracle = S.calibrated_oracle(self.requests, curve, sim, oracle_target)
        init = min(max(int(self.oracle.timeline["target"][0]), sim.min_replicas), sim.max_replicas)
        self.sim = replace(sim, initial_replicas=init)  # start-up transients equal for all policies


def choose_target(name: str, members: list[Member], curve, spec, grid: list[float]) -> dict:
    """The cheapest target in `grid` (replica-seconds summed over the tuning members) meeting the
    attainment bar on every tuning member; the one with the best worst margin if none does."""
    from corral.autoscaler import sim as S

    rows = []
    for t in grid:
        runs = [run_policy(name, m.requests, curve, m.sim, spec, t).summary() for m in members]
        margins = [r["slo_attainment"] - S.attainment_bar(m.oracle.feasible_attainment) for r, m in zip(runs, members)]
        rows.append({"target": t, "min_margin_vs_bar": round(min(margins), 5),
                     "replica_seconds": round(sum(r["replica_seconds"] for r in runs), 1),
                     "slo_attainment": [r["slo_attainment"] for r in runs]})
        log(f"  tune {name} target {t:g}: {rows[-1]}")
    meeting = [r for r in rows if r["min_margin_vs_bar"] >= 0]
    pick = min(meeting, key=lambda r: r["replica_seconds"]) if meeting else max(rows, key=lambda r: r["min_margin_vs_bar"])
    return {"chosen": pick["target"], "met_bar_on_tuning_set": bool(meeting), "grid": rows}


def judge_member(m: Member, curve, spec, targets: dict[str, float], held_out: bool) -> tuple[dict, list]:
    from corral.autoscaler import sim as S

    corral = run_policy("corral", m.requests, curve, m.sim, spec, targets["corral"])
    ray_default = run_policy("ray_default", m.requests, curve, m.sim, spec, targets["ray_default"])
    o, c, r = m.oracle.summary(), corral.summary(), ray_default.summary()
    report = {
        "description": m.workload.description, "params": m.workload.params, "seed": m.seed,
        "held_out": held_out, "requests": len(m.requests),
        "oracle_headroom": float(m.oracle.policy.split("x")[-1].rstrip(")")),
        "policies": {"corral": c, "ray_default": r, "oracle": o},
        "feasible_attainment": m.oracle.feasible_attainment,
        "goal": S.judge(c, o, r, m.oracle.feasible_attainment),
        "ray_default_goal": S.judge(r, o, r, m.oracle.feasible_attainment) | {"better_than_ray_default": None},
    }
    report["ray_default_goal"].pop("met")
    return report, [corral, ray_default, m.oracle]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="folder for the plots (and result.json)")
    ap.add_argument("--workloads", default=None, help="judge only these members (comma-separated names)")
    ap.add_argument("--duration-s", type=float, default=1800.0, help="length of each generated member")
    ap.add_argument("--targets", default=None, metavar="T1,T2,...",
                    help="batch targets to choose each policy's setting from, on the tuning set (default: only "
                         "the curve's knee, the target `corral plan capacity` writes: the setting is the capacity "
                         "plan's, and no workload is used to choose it)")
    ap.add_argument("--tuning", default=",".join(TUNING), help="tuning members (drawn with seed 0)")
    ap.add_argument("--seed", type=int, default=JUDGE_SEED,
                    help=f"seed of the judged members' draws (default {JUDGE_SEED}; {TUNING_SEED} draws the tuning "
                         "draws, to judge candidates there against their own oracle with --reference)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an autoscaling spec field for both policies, e.g. downscale_delay_s=60")
    ap.add_argument("--curve", default=None,
                    help="latency-vs-batch curve JSON (default: autoscaler/curves/smollm2-135m-cpu1.json)")
    ap.add_argument("--cold-start-s", type=float, default=90.0)
    ap.add_argument("--ttft-slo-s", type=float, default=2.0)
    ap.add_argument("--itl-slo-s", type=float, default=0.4)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--replica-mtbf-s", type=float, default=0.0,
                    help="faults: mean time between failures of one serving replica, seconds (a failed replica's "
                         "requests fail and Serve starts a replacement; the same fault process, seeded by --seed, "
                         "for every policy of a draw); 0 = none")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                    help="judge a candidate setting against the current one (needs --reference)")
    ap.add_argument("--reference", action="append", default=[],
                    help="a result.json of this benchmark (--candidate); repeat it to judge on several draws "
                         "(each reference's members, drawn with its --seed): per member, the draws' mean attainment "
                         "and replica-seconds decide better and worse, and the goal is counted per draw")
    ap.add_argument("--candidate-draws", default="tuning,judging", metavar="tuning,judging",
                    help="which draws the candidates run on, comma-separated: tuning (seed 0) and judging (the "
                         "reference's draws, with its oracle and Ray default: the goal's verdict); default both")
    ap.add_argument("--rejudge", default=None, metavar="CANDIDATES_JSON",
                    help="recompute the verdicts of a candidates.json of this benchmark from the draws it holds "
                         "(no simulation) and print it; out_dir is not written")
    args = ap.parse_args(argv)
    if args.rejudge:
        print(json.dumps(rejudge(json.loads(Path(args.rejudge).read_text())), indent=1))
        return 0
    warnings.simplefilter("ignore")
    import logging

    import ray.serve.config  # noqa: F401 - configures Ray's loggers; quieten them after

    from corral.autoscaler import sim as S
    from corral.autoscaler.sim.family import family
    from corral.cluster.spec.autoscaling import AutoscalingSpec

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the policy's per-decision log lines
    curve = S.LatencyCurve.load(args.curve or S.CURVES_DIR / "smollm2-135m-cpu1.json")
    knee = float(curve.knee())
    try:
        sim = S.SimConfig(ttft_slo_s=args.ttft_slo_s, itl_slo_s=args.itl_slo_s, max_num_seqs=args.max_num_seqs,
                          cold_start_s=args.cold_start_s, min_replicas=1, max_replicas=64,
                          replica_mtbf_s=args.replica_mtbf_s, fault_seed=args.seed)
    except ValueError as e:  # e.g. a negative --replica-mtbf-s, named by the simulator
        ap.error(str(e))
    overrides = dict(kv.split("=", 1) for kv in args.set)
    # The capacity plan's setting: the knee as batch target and the curve's engine model.
    engine = {"engine_base_s": curve.step.base_s, "engine_per_decode_seq_s": curve.step.per_decode_seq_s,
              "engine_per_prefill_token_s": curve.step.per_prefill_token_s}
    spec = AutoscalingSpec(**{"target_ongoing_requests": knee, "ttft_p95_s": args.ttft_slo_s,
                              "itl_p95_s": args.itl_slo_s, "cold_start_s": args.cold_start_s, **engine, **overrides})
    fam = family(args.duration_s)
    tuning_names = [n for n in args.tuning.split(",") if n]
    judged_names = args.workloads.split(",") if args.workloads else list(fam)
    unknown = sorted(set(tuning_names + judged_names) - set(fam))
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; the family: {sorted(fam)}")
    grid = [float(t) for t in args.targets.split(",")] if args.targets else [knee]
    t0 = time.time()
    if args.candidate:
        if not args.reference:
            ap.error("--candidate needs --reference RESULT_JSON")
        asked = args.candidate_draws.split(",")
        unknown = [d for d in asked if d not in ("tuning", "judging")]
        if unknown:
            ap.error(f"--candidate-draws: unknown draw(s) {unknown}; choose from tuning,judging")
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)

        def write(report: dict) -> str:  # after every member: a long run leaves what it has judged so far
            report["elapsed_s"] = round(time.time() - t0, 1)
            text = json.dumps(report, indent=1)
            (out / "candidates.json").write_text(text)
            return text

        refs = [json.loads(Path(r).read_text()) for r in args.reference]
        print(write(candidates(args.candidate, refs, fam, judged_names,
                               curve, sim, spec, knee, asked, write)))
        return 0

    log(f"tuning on {tuning_names} (seed {TUNING_SEED})")
    tuning = [Member(fam[n], TUNING_SEED, curve, replace(sim, fault_seed=TUNING_SEED), knee) for n in tuning_names]
    chosen = {p: choose_target(p, tuning, curve, spec, grid) for p in ("corral", "ray_default")}
    targets = {p: c["chosen"] for p, c in chosen.items()}

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, plots = {}, []
    for name in judged_names:
        m = Member(fam[name], args.seed, curve, sim, knee)
        # Without --targets no workload chooses the setting. With it, the recorded trace is the
        # same at every seed: its tuning half is not held out.
        held_out = not args.targets or name not in tuning_names or fam[name].params.get("trace") is None
        results[name], runs = judge_member(m, curve, spec, targets, held_out)
        g = results[name]["goal"]
        log(f"{name}: corral {results[name]['policies']['corral']['slo_attainment']:.4f} (bar {g['attainment_bar']:.4f}) "
            f"x{g['replica_seconds_vs_oracle']} oracle, x{g['replica_seconds_vs_ray_default']} ray; met={g['met']}")
        if not args.no_plots:
            plots.append(plot(name, fam[name], m.requests, runs, out))

    held = {n: r for n, r in results.items() if r["held_out"]}
    report = {
        "benchmark": "autoscaler_sim",
        "goal": S.GOAL_TEXT,
        "curve": curve.name, "knee_batch": knee, "cold_start_s": args.cold_start_s,
        "duration_s": args.duration_s, "max_num_seqs": args.max_num_seqs, "slo": {"ttft_s": args.ttft_slo_s, "itl_s": args.itl_slo_s},
        "spec_overrides": overrides,
        **({"replica_mtbf_s": args.replica_mtbf_s} if args.replica_mtbf_s else {}),
        "protocol": ((f"one setting per policy: the cheapest batch target in {grid} meeting the attainment bar "
                      f"on every tuning member {tuning_names} (seed {TUNING_SEED})" if args.targets else
                      f"one setting for both policies: the capacity plan's batch target (the curve's knee, {knee:g}) "
                      "and the spec's defaults, no workload used to choose it")
                     + f"; judged unchanged on each member (generated members at seed {args.seed}); held_out=false "
                       "marks a member whose data a --targets choice would see"),
        "tuning": chosen,
        "workloads": results,
        "summary": {
            "held_out_met": sum(r["goal"]["met"] for r in held.values()), "held_out": len(held),
            "not_met": [n for n, r in held.items() if not r["goal"]["met"]],
            "table": [{"workload": n, "held_out": r["held_out"],
                       "corral": r["policies"]["corral"]["slo_attainment"], "bar": r["goal"]["attainment_bar"],
                       "oracle": r["policies"]["oracle"]["slo_attainment"],
                       "ray_default": r["policies"]["ray_default"]["slo_attainment"],
                       "corral_rs_vs_oracle": r["goal"]["replica_seconds_vs_oracle"],
                       "ray_rs_vs_oracle": r["ray_default_goal"]["replica_seconds_vs_oracle"],
                       "scale_events": r["policies"]["corral"]["scale_events"], "met": r["goal"]["met"]}
                      for n, r in results.items()],
        },
        "elapsed_s": round(time.time() - t0, 1),
        "plots": plots,
    }
    text = json.dumps(report, indent=1)
    (out / "result.json").write_text(text)
    print(text)
    return 0


def rejudge(report: dict) -> dict:
    """A candidates report's verdicts recomputed from its draws (the rule as it is now)."""
    cands = {c: v["fields"] for c, v in report["candidates"].items()}
    return report | _candidates_report(cands, report["workloads"], report["reference_protocol"])


def _parse_candidate(text: str) -> tuple[str, dict[str, str]]:
    name, _, fields = text.partition(":")
    return name, dict(kv.split("=", 1) for kv in fields.split(",") if kv)


def candidates(texts: list[str], references: list[dict], fam, names: list[str], curve, sim, spec, knee: float,
               draws: list[str] = ("tuning", "judging"), progress=None) -> dict:
    """Each candidate vs the current setting, paired, on the tuning and/or the judging draws.
    The judging draws are the reference's (its members' `seed`), judged against its oracle and Ray
    default; the tuning draws are seed `TUNING_SEED`. A candidate is kept only if it is better on
    the judging draws and worse on none (verdicts are on the judging draws; on the tuning draws
    alone the same comparison is reported)."""
    from autoscaler_sim_draws import same_at_every_seed

    from corral.autoscaler import sim as S

    cands = dict(_parse_candidate(t) for t in texts)
    protocols = [ref["protocol"] for ref in references]
    base = {"current": {}}
    rows: dict[str, dict] = {}
    for name in names:
        rows[name] = {}
        # (draw, seed, the reference's member or None, its faults): the tuning draw, then each reference's
        # draw, under the faults the reference ran with. The recorded trace is the same at every seed: one
        # reference judges it, unless the references had faults (another fault draw at each seed).
        refs = references[:1] if same_at_every_seed(fam[name].params, references) else references
        runs = ([("tuning", TUNING_SEED, None, sim.replica_mtbf_s)] if "tuning" in draws else []) + (
            [("judging", ref["workloads"][name].get("seed", JUDGE_SEED), ref["workloads"][name],
              ref.get("replica_mtbf_s", 0.0)) for ref in refs]
            if "judging" in draws else [])
        for draw, seed, ref, mtbf_s in runs:
            requests = fam[name].requests(seed)
            # The fleet every policy starts from: the reference oracle's first plan (headroom 1 on the tuning draw).
            headroom = ref["oracle_headroom"] if ref is not None else 1.0
            init = S.OraclePolicy(requests, curve, knee, sim.cold_start_s, headroom=headroom).initial()
            msim = replace(sim, initial_replicas=min(max(init, sim.min_replicas), sim.max_replicas),
                           replica_mtbf_s=mtbf_s, fault_seed=seed)
            for cname, fields in (base | cands).items():
                cspec = type(spec)(**{**spec.model_dump(), **fields})  # validated: a bad field is named
                c = run_policy("corral", requests, curve, msim, cspec, knee).summary()
                entry = {"slo_attainment": c["slo_attainment"], "replica_seconds": c["replica_seconds"],
                         "scale_events": c["scale_events"], "seed": seed}
                row = rows[name].setdefault(cname, {})
                if ref is None:
                    row["tuning"] = entry
                else:
                    pol = ref["policies"]
                    entry["goal"] = S.judge(c, pol["oracle"], pol["ray_default"], ref["feasible_attainment"])
                    row.setdefault("judging", {"draws": []})["draws"].append(entry)
                    row["judging"] |= _mean_of_draws(row["judging"]["draws"])
            last = {c: r["tuning"] if ref is None else r["judging"]["draws"][-1] for c, r in rows[name].items()}
            log(f"{name} {draw} (seed {seed}): " + ", ".join(
                f"{c} {e['slo_attainment']:.4f}/{e['replica_seconds']:.0f}" for c, e in last.items()))
        if progress is not None:
            progress(_candidates_report(cands, rows, protocols))
    return _candidates_report(cands, rows, protocols)


def _mean_of_draws(draws: list[dict]) -> dict:
    """A member's judging draws summed up: mean attainment and replica-seconds, goal met on how many."""
    n = len(draws)
    return {"slo_attainment": round(sum(d["slo_attainment"] for d in draws) / n, 5),
            "replica_seconds": round(sum(d["replica_seconds"] for d in draws) / n, 1),
            "goal_met": sum(bool(d["goal"]["met"]) for d in draws), "draws_judged": n}


def paired_over_draws(current: list[dict], candidate: list[dict]) -> dict:
    """A candidate against the current setting on the same draws, with 95% intervals over the draws:
    the mean attainment difference (points, Student t) and the geometric mean replica-seconds ratio
    (t on the logs). `verdict` is "worse" where either interval lies wholly beyond the mean rule's
    tolerance on the worse side (attainment down more than 0.1 point, or replica-seconds up more
    than 1%); "better" where one lies wholly beyond it on the better side and the other wholly
    within it or better (attainment not down by 0.1 point, replica-seconds not up by 1%: non-inferior);
    else None (a trade-off, or not told apart from the draws' spread; always None with one draw)."""
    from corral.common.stats import geometric_mean_ci, mean_ci

    att = mean_ci([100.0 * (c["slo_attainment"] - b["slo_attainment"]) for b, c in zip(current, candidate)])
    cost = geometric_mean_ci([c["replica_seconds"] / b["replica_seconds"] for b, c in zip(current, candidate)])
    verdict = None
    if att.low is not None and cost.low is not None:
        up, down = 1 + TOLERANCE_RATIO, 1 - TOLERANCE_RATIO
        if att.high < -TOLERANCE_PT or cost.low > up:
            verdict = "worse"
        elif (att.low > TOLERANCE_PT and cost.high <= up) or (cost.high < down and att.low >= -TOLERANCE_PT):
            verdict = "better"
    return {"draws": att.n, "verdict": verdict,
            "attainment_pt": [round(v, 3) if v is not None else None for v in (att.value, att.low, att.high)],
            "replica_seconds_ratio": [round(v, 4) if v is not None else None for v in (cost.value, cost.low, cost.high)]}


def _candidates_report(cands: dict, rows: dict, protocols: list[str]) -> dict:
    from corral.autoscaler import sim as S

    def compare(cname: str, draw: str) -> dict:
        better, worse = [], []
        for name, r in rows.items():
            if draw not in r["current"]:
                continue
            a, b = r[cname][draw], r["current"][draw]
            d_att = a["slo_attainment"] - b["slo_attainment"]
            ratio = a["replica_seconds"] / b["replica_seconds"]
            if d_att < -TOLERANCE_PT / 100 or ratio > 1 + TOLERANCE_RATIO:
                worse.append(name)
            elif d_att > TOLERANCE_PT / 100 or ratio < 1 - TOLERANCE_RATIO:
                better.append(name)
        return {"better_on": better, "worse_on": worse}

    verdicts = {}
    for cname in cands:
        tuning, judging = compare(cname, "tuning"), compare(cname, "judging")
        judged = [r for r in rows.values() if "judging" in r["current"]]
        paired = {name: paired_over_draws(r["current"]["judging"]["draws"], r[cname]["judging"]["draws"])
                  for name, r in rows.items() if "judging" in r["current"]}
        judging |= {"better_at_95": [n for n, p in paired.items() if p["verdict"] == "better"],
                    "worse_at_95": [n for n, p in paired.items() if p["verdict"] == "worse"],
                    "paired": paired}
        verdicts[cname] = {
            "fields": cands[cname], "tuning": tuning, "judging": judging,
            "kept": bool(judging["better_on"]) and not judging["worse_on"],
            "goal_met_judging": sum(r[cname]["judging"]["goal_met"] for r in judged),
            "goal_met_judging_current": sum(r["current"]["judging"]["goal_met"] for r in judged),
            "draws_judged": sum(r["current"]["judging"]["draws_judged"] for r in judged)}
    return {"benchmark": "autoscaler_sim candidates", "goal": S.GOAL_TEXT,
            "rule": RULE_TEXT,
            "reference_protocol": protocols,
            "seeds": {"tuning": TUNING_SEED, "judging": "the reference's"}, "candidates": verdicts, "workloads": rows}


def plot(name: str, workload, requests, results, out: Path) -> str:
    """Offered load on top, then replicas (target, ready) against requests in the system per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from corral.autoscaler.sim.family import load_profile

    prof = load_profile(requests, 30.0)
    fig, axes = plt.subplots(len(results) + 1, 1, figsize=(9, 1.9 * (len(results) + 1)), sharex=True)
    ax = axes[0]
    ax.plot(prof["t_s"], prof["rps"], color="C1", label="offered req/s")
    ax.set_ylabel("req/s")
    ax2 = ax.twinx()
    ax2.plot(prof["t_s"], prof["prompt_tokens_per_s"], color="C2", alpha=0.5, label="prompt tok/s")
    ax2.plot(prof["t_s"], prof["answer_tokens_per_s"], color="C4", alpha=0.5, label="answer tok/s")
    ax2.set_ylabel("tokens/s")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=7)
    ax.set_title(f"{name}: {workload.description}", fontsize=8)
    for ax, res in zip(axes[1:], results):
        tl = res.timeline
        ax.plot(tl["t"], tl["target"], color="C0", label="target replicas")
        ax.plot(tl["t"], tl["ready"], color="C0", alpha=0.4, linestyle="--", label="ready")
        ax.set_ylabel("replicas")
        ax2 = ax.twinx()
        ax2.plot(tl["t"], tl["ongoing"], color="C1", alpha=0.5, linewidth=0.7, label="requests in system")
        s = res.summary()
        ax.set_title(f"{res.policy}: {s['slo_attainment']:.2%} within SLO, {s['replica_seconds']:.0f} replica-s, "
                     f"{s['scale_events']} scale events", fontsize=8)
    axes[-1].set_xlabel("simulated time (s)")
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
