"""Where corral's autoscaling policy loses, per member of the workload family, from the
simulator's own traces, and what knowing the present load alone buys.

For each member (its judging draw, seed 1, the reference run's oracle headroom) it runs corral's
policy (the current setting: the spec's defaults, the curve's knee as batch target and its
engine model, as `benchmarks/autoscaler_sim.py` sets them) and the
reference oracle, and reports:

* the misses (requests over the SLO), split by the clause they break (TTFT, ITL) and by whether
  the fleet was then under-provisioned (ready replicas below what the oracle's plan asks for at
  that moment) or not;
* the replica-seconds above and below the oracle's plan (target replicas, second by second) and
  the peak target of each;
* the **reactive reference**: the oracle's plan without foresight (`OraclePolicy` planned with no cold start ahead: at
  each moment it asks for what the load of the next `window_s` needs, knowing that load exactly,
  and the replicas serve a cold start later), at several headrooms (multiples of the reference
  oracle's headroom on that member). It knows the present load exactly but holds no replica
  longer than the load needs it (no memory, unlike corral's delays and hysteresis), so it is a
  reference for what knowing the current rate buys, not a bound.

    python benchmarks/autoscaler_sim_losses.py REFERENCE_RESULT_JSON [--workloads a,b] [--headrooms 1,1.5,2,3,4] [--out FILE]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="a result.json of benchmarks/autoscaler_sim.py (its judging draws)")
    ap.add_argument("--workloads", default=None)
    ap.add_argument("--headrooms", default="1,1.5,2,3,4", help="headrooms of the reactive bound's plan, as multiples of the oracle's")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
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
    fam = family()
    names = args.workloads.split(",") if args.workloads else list(ref["workloads"])
    headrooms = [float(h) for h in args.headrooms.split(",")]
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
            pol = S.OraclePolicy(requests, curve, knee, 0.0, headroom=h * r["oracle_headroom"])
            cfg = S.serve_config(sim.min_replicas, sim.max_replicas, init, knee, 0.0, 0.0, sim.look_back_period_s)
            res = S.simulate(requests, pol, cfg, msim, curve, f"reactive(x{h:g})")
            bound.append({"headroom": h, "slo_attainment": round(res.slo_attainment, 5),
                          "replica_seconds_vs_oracle": round(res.replica_seconds / oracle.replica_seconds, 3)})
        row["reactive_reference"] = bound
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
