"""Benchmark: corral's autoscaling policy vs Ray Serve's default vs an offline oracle.

All three run in one process over the same trace, through the same simulated Serve
controller (corral.autoscaler.simulator). Prints one JSON document with the results side by
side and the goal's ratios; writes plots (replicas vs load over time) to OUT_DIR.

    python benchmarks/autoscaler_sim.py OUT_DIR [--speedup 1] [--limit-s S] [--curve FILE]

Goal (issue 5): SLO attainment >= 99 % with replica-seconds <= 1.15 x the oracle's, and
better than Ray's default on both (or better on one, equal on the other).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="folder for the plots")
    ap.add_argument("--trace", default="../shared/traces/azure_llm_conv_2023.csv")
    ap.add_argument("--speedup", type=float, default=1.0, help="time compression of the trace")
    ap.add_argument("--limit-s", type=float, default=None, help="replay only the first S (compressed) seconds")
    ap.add_argument("--keep", type=float, default=1.0, help="share of the trace's requests kept (seeded)")
    ap.add_argument("--token-scale", type=float, default=1.0, help="factor on prompt and answer lengths")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an autoscaling spec field for both policies, e.g. downscale_delay_s=60")
    ap.add_argument("--curve", default=None, help="latency-vs-batch curve JSON (default: autoscaler/curves/default.json)")
    ap.add_argument("--cold-start-s", type=float, default=60.0)
    ap.add_argument("--ttft-slo-s", type=float, default=2.0)
    ap.add_argument("--itl-slo-s", type=float, default=0.1)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--target", type=float, default=None,
                    help="per-replica batch target (default: the curve's knee)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    from ray.serve.config import AutoscalingConfig

    from corral.autoscaler import simulator as S
    from corral.autoscaler.policy import CorralAutoscalingPolicy
    from corral.cluster.spec.autoscaling import AutoscalingSpec, serve_autoscaling_config

    curve = S.LatencyCurve.load(args.curve) if args.curve else S.LatencyCurve.default()
    target = args.target or float(curve.knee())
    requests = S.load_trace(args.trace, speedup=args.speedup, limit_s=args.limit_s, keep=args.keep,
                            token_scale=args.token_scale)
    sim = S.SimConfig(ttft_slo_s=args.ttft_slo_s, itl_slo_s=args.itl_slo_s, max_num_seqs=args.max_num_seqs,
                      cold_start_s=args.cold_start_s, min_replicas=1, max_replicas=64)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    spec = AutoscalingSpec(**{"target_ongoing_requests": target, "ttft_p95_s": args.ttft_slo_s,
                              "itl_p95_s": args.itl_slo_s, "cold_start_s": args.cold_start_s, **overrides})
    t0 = time.time()
    oracle = S.calibrated_oracle(requests, curve, sim, target)
    # Every policy starts from the oracle's opening fleet, so start-up transients are equal.
    init = min(max(int(oracle.timeline["target"][0]), 1), sim.max_replicas)
    sim = S.replace(sim, initial_replicas=init)

    d = serve_autoscaling_config(spec, arm="sim", min_replicas=1, max_replicas=64, initial_replicas=init,
                                 max_num_seqs=args.max_num_seqs)
    corral = S.simulate(requests, CorralAutoscalingPolicy(**d["policy"]["policy_kwargs"]),
                        AutoscalingConfig(**d), sim, curve, "corral")
    # Ray's default policy configured as serving/app.py configures it without corral's policy:
    # same target and the spec's delays.
    default_cfg = S.serve_config(1, 64, init, target, spec.upscale_delay_s, spec.downscale_delay_s,
                                 spec.look_back_period_s)
    ray_default = S.simulate(requests, S.ray_default_policy(), default_cfg, sim, curve, "ray_default")
    elapsed = time.time() - t0

    o, c, r = oracle.summary(), corral.summary(), ray_default.summary()
    rs_ratio = c["replica_seconds"] / o["replica_seconds"]
    better_slo = c["slo_attainment"] > r["slo_attainment"]
    better_cost = c["replica_seconds"] < r["replica_seconds"]
    eq_slo = abs(c["slo_attainment"] - r["slo_attainment"]) < 1e-3
    eq_cost = abs(c["replica_seconds"] / r["replica_seconds"] - 1) < 0.01
    report = {
        "trace": args.trace, "speedup": args.speedup, "limit_s": args.limit_s, "requests": len(requests),
        "keep": args.keep, "token_scale": args.token_scale,
        "curve": curve.name, "batch_target": target, "cold_start_s": args.cold_start_s,
        "spec_overrides": overrides,
        "slo": {"ttft_s": args.ttft_slo_s, "itl_s": args.itl_slo_s},
        "oracle_headroom": round(oracle.policy and float(oracle.policy.split("x")[-1].rstrip(")")), 3),
        "policies": {"corral": c, "ray_default": r, "oracle": o},
        "ratios": {
            "corral_replica_seconds_vs_oracle": round(rs_ratio, 3),
            "ray_default_replica_seconds_vs_oracle": round(r["replica_seconds"] / o["replica_seconds"], 3),
            "corral_replica_seconds_vs_ray_default": round(c["replica_seconds"] / r["replica_seconds"], 3),
        },
        "goal": {
            "slo_attainment_ge_99": c["slo_attainment"] >= 0.99,
            "replica_seconds_le_1.15x_oracle": rs_ratio <= 1.15,
            "better_than_ray_default": (better_slo and (better_cost or eq_cost)) or (better_cost and (better_slo or eq_slo)),
        },
        "elapsed_s": round(elapsed, 1),
    }
    report["goal"]["met"] = all(report["goal"].values())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot([corral, ray_default, oracle], out)
    print(json.dumps(report, indent=2))
    return 0


def plot(results, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.2 * len(results)), sharex=True)
    for ax, res in zip(axes, results):
        tl = res.timeline
        ax.plot(tl["t"], tl["target"], label="target replicas", color="C0")
        ax.plot(tl["t"], tl["ready"], label="ready replicas", color="C0", alpha=0.4, linestyle="--")
        ax.set_ylabel("replicas")
        ax2 = ax.twinx()
        ax2.plot(tl["t"], tl["ongoing"], label="ongoing requests (load)", color="C1", alpha=0.6, linewidth=0.8)
        ax2.set_ylabel("ongoing requests")
        s = res.summary()
        ax.set_title(f"{res.policy}: SLO attainment {s['slo_attainment']:.2%}, "
                     f"{s['replica_seconds']:.0f} replica-s, {s['scale_events']} scale events")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    axes[-1].set_xlabel("simulated time (s)")
    fig.tight_layout()
    path = out / "replicas_vs_load.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]


if __name__ == "__main__":
    sys.exit(main())
