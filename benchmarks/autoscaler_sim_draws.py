"""The autoscaler benchmark's verdicts over several draws of each member.

One draw of a generated member is one arrival sequence: on the bursty members the policies'
attainment moves by several points from one draw to the next (where the bursts fall against the
cold start), so a single draw cannot tell two settings apart. This reads result.json files of
`benchmarks/autoscaler_sim.py`, each made with another `--seed`, and prints per member: how many
draws met the goal, and the mean and range of corral's attainment and replica-seconds against the
oracle, beside Ray Serve's default policy. The recorded trace's halves are the same at every seed:
they count once, unless the runs had replica faults (`--replica-mtbf-s`, seeded per draw). Which
draws are tuning draws and which are held out is the caller's choice (the
seeds listed per member), not the runs' `held_out` flag, which speaks of `--targets` only.

    python benchmarks/autoscaler_sim_draws.py RESULT.json [RESULT.json ...] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def same_at_every_seed(params: dict, references: list[dict]) -> bool:
    """Whether a member's runs are the same at every seed of these references: the recorded trace
    (its requests do not depend on the seed), unless the runs had replica faults (seeded per draw)."""
    return params.get("trace") is not None and not any(r.get("replica_mtbf_s") for r in references)


def summarize(references: list[dict]) -> dict:
    """Per member over the references' draws: goal met, better than Ray's default, and corral's and
    Ray's attainment and replica-seconds vs the oracle (mean, min, max)."""
    out: dict[str, dict] = {}
    names = [n for n in references[0]["workloads"] if all(n in r["workloads"] for r in references)]
    for name in names:
        draws = [r["workloads"][name] for r in references]
        if same_at_every_seed(draws[0]["params"], references):
            draws = draws[:1]

        def spread(values: list[float], digits: int) -> dict:
            return {"mean": round(sum(values) / len(values), digits), "min": round(min(values), digits),
                    "max": round(max(values), digits)}

        out[name] = {
            "seeds": [d["seed"] for d in draws], "draws": len(draws),
            "goal_met": sum(bool(d["goal"]["met"]) for d in draws),
            "attainment_met": sum(bool(d["goal"]["attainment_met"]) for d in draws),
            "better_than_ray_default": sum(bool(d["goal"]["better_than_ray_default"]) for d in draws),
            "corral_slo_attainment": spread([d["policies"]["corral"]["slo_attainment"] for d in draws], 5),
            "corral_replica_seconds_vs_oracle": spread([d["goal"]["replica_seconds_vs_oracle"] for d in draws], 3),
            "ray_default_slo_attainment": spread([d["policies"]["ray_default"]["slo_attainment"] for d in draws], 5),
            "ray_default_replica_seconds_vs_oracle": spread(
                [d["ray_default_goal"]["replica_seconds_vs_oracle"] for d in draws], 3),
            "oracle_slo_attainment": spread([d["policies"]["oracle"]["slo_attainment"] for d in draws], 5),
            "corral_scale_events": spread([float(d["policies"]["corral"]["scale_events"]) for d in draws], 1),
        }
    return {"benchmark": "autoscaler_sim draws", "goal": references[0]["goal"], "draws": len(references),
            "protocols": sorted({r["protocol"] for r in references}), "workloads": out}


def markdown(summary: dict) -> str:
    """The README's table: one row per member."""
    rows = ["| workload | goal met (draws) | corral within SLO, mean [min, max] | corral replica-s vs oracle, mean "
            "[min, max] | Ray default within SLO | Ray replica-s vs oracle | better than Ray (draws) |",
            "|---|---|---|---|---|---|---|"]
    for name, m in summary["workloads"].items():
        n = m["draws"]
        a, c = m["corral_slo_attainment"], m["corral_replica_seconds_vs_oracle"]
        ra, rc = m["ray_default_slo_attainment"], m["ray_default_replica_seconds_vs_oracle"]
        rows.append(f"| {name} | {m['goal_met']} of {n} | {a['mean']:.2%} [{a['min']:.2%}, {a['max']:.2%}] | "
                    f"{c['mean']:.2f}x [{c['min']:.2f}, {c['max']:.2f}] | {ra['mean']:.1%} | {rc['mean']:.2f}x | "
                    f"{m['better_than_ray_default']} of {n} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="result.json files of benchmarks/autoscaler_sim.py, one per --seed")
    ap.add_argument("--markdown", action="store_true", help="print the README table instead of JSON")
    args = ap.parse_args(argv)
    refs = [json.loads(Path(p).read_text()) for p in args.results]
    seeds = [sorted({m["seed"] for m in r["workloads"].values()}) for r in refs]
    if len({tuple(s) for s in seeds}) < len(seeds):
        ap.error(f"two results hold the same draws (seeds {seeds}): each must be made with another --seed")
    summary = summarize(refs)
    print(markdown(summary) if args.markdown else json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
