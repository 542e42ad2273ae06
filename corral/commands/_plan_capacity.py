"""`corral plan capacity`: size an arm from `corral loadtest` results.

The lead's corral/commands/plan.py calls `register(plan_subparsers)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from corral.commands._common import EXIT_BAD_INPUT, CliError
from corral.commands._cost import add_cost_args, cost_comparison


def register(plan_sub: argparse._SubParsersAction) -> None:
    p = plan_sub.add_parser(
        "capacity", help="replicas, GPUs, cost, max_num_seqs and autoscaler settings from load-test results",
        description="Fit a per-replica model to `corral loadtest` results (a --mode sweep is best), find λ* "
                    "(highest rate meeting the SLO) and size the arm for a target rate. Prints the plan and "
                    "writes a fleet-spec overlay (YAML).")
    p.add_argument("--results", required=True, help="folder written by `corral loadtest` (summary.json, requests.jsonl)")
    p.add_argument("--slo", required=True, help="e.g. ttft_p95=0.5,itl_p95=50ms")
    p.add_argument("--target-rps", type=float, required=True, help="request rate to plan for")
    p.add_argument("--gpu-price", type=float, default=None,
                   help="USD per GPU-hour (default: the fleet's cluster.gpu_hourly_usd, if recorded)")
    p.add_argument("--arm", default=None, help="arm to plan (required when the results span several arms)")
    p.add_argument("--replicas", type=int, default=None, help="replicas the arm had during the test (default: recorded)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="max_num_seqs the arm had during the test (default: recorded)")
    p.add_argument("--devices-per-replica", type=int, default=None, help="GPUs per replica (default: recorded, else 1)")
    p.add_argument("--utilization", type=float, default=0.85, help="share of λ* each replica is planned to carry")
    p.add_argument("--min-rps", type=float, default=0.0, help="lowest expected rate (sets replicas.min)")
    p.add_argument("--plan-max-num-seqs", type=int, default=None,
                   help="deploy this max_num_seqs instead of the recommended one")
    p.add_argument("--predict-replicas", type=int, default=None, help="also predict λ* with this many replicas")
    p.add_argument("--predict-max-num-seqs", type=int, default=None, help="also predict λ* with this max_num_seqs")
    p.add_argument("--fleet", default=None, help="fleet spec to check the overlay against (merged by arm name)")
    p.add_argument("--out", default=None, help="overlay YAML path (default: RESULTS/capacity-overlay.yaml); "
                   "capacity-plan.json and latency-curve.json (for the autoscaler simulator) go beside it")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_cost_args(p)
    p.set_defaults(func=run)


def load_planner(results: str, slo: str, arm: str | None = None, replicas: int | None = None,
                 max_num_seqs: int | None = None, devices_per_replica: int | None = None):
    """Read a results folder and fit the planner. Raises CliError (exit 2) naming the bad input."""
    from corral.loadtests.capacity import Measured, Planner, stage_points
    from corral.loadtests.report import read_records
    from corral.loadtests.slo import parse_slo

    try:
        clauses = parse_slo(slo)
    except ValueError as exc:
        raise CliError(f"--slo: {exc}", EXIT_BAD_INPUT) from None
    d = Path(results)
    try:
        summary = json.loads((d / "summary.json").read_text())
        records = read_records(d / "requests.jsonl")
    except (OSError, ValueError) as exc:
        raise CliError(f"--results {results}: cannot read load-test results ({exc})", EXIT_BAD_INPUT) from None
    deployment = summary.get("deployment") or {}
    dep_arms = deployment.get("arms") or {}
    seen_arms = sorted({r.arm for r in records if r.arm})
    if arm is None:
        candidates = list(dep_arms) or seen_arms
        if len(candidates) != 1:
            raise CliError(f"--arm: the results span arms {candidates}; name the one to plan", EXIT_BAD_INPUT)
        arm = candidates[0]
    info = dep_arms.get(arm, {})
    weight = info.get("weight", 100) / 100
    replicas = replicas or info.get("replicas")
    max_num_seqs = max_num_seqs or info.get("max_num_seqs")
    if replicas is None or max_num_seqs is None:
        raise CliError("--replicas/--max-num-seqs: the results do not record the arm's deployment "
                       "(run `corral loadtest --fleet FILE`); give both", EXIT_BAD_INPUT)
    multi = len(seen_arms) > 1
    stages = []
    for s in summary.get("stages", []):
        recs = [r for r in records if r.stage == s["name"] and (not multi or r.arm == arm)]
        rate = s.get("offered_rate_rps")
        stages.append((s["name"], None if rate is None else rate * weight, s["duration_s"], recs))
    points = stage_points(stages, clauses, replicas)
    measured = Measured(arm, replicas, max_num_seqs, devices_per_replica or info.get("devices_per_replica", 1))
    try:
        return Planner.fit(measured, clauses, points), summary
    except ValueError as exc:
        raise CliError(f"--results {results}: {exc}", EXIT_BAD_INPUT) from None


def merge_overlay(fleet_doc: dict, overlay: dict) -> dict:
    """Apply a capacity overlay to a fleet document: arms merged by name, nested mappings merged."""
    out = json.loads(json.dumps(fleet_doc))
    by_name = {a.get("name"): a for a in out.get("arms", [])}
    for patch in overlay.get("arms", []):
        target = by_name.get(patch["name"])
        if target is None:
            raise CliError(f"overlay arm {patch['name']!r} is not in the fleet (arms: {sorted(by_name)})", EXIT_BAD_INPUT)
        for key, value in patch.items():
            if isinstance(value, dict):
                target[key] = {**(target.get(key) or {}), **value}
            else:
                target[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import yaml

    from corral.loadtests.capacity import plan_capacity

    planner, summary = load_planner(args.results, args.slo, args.arm, args.replicas, args.max_num_seqs,
                                    args.devices_per_replica)
    price = args.gpu_price if args.gpu_price is not None else (summary.get("deployment") or {}).get("gpu_hourly_usd")
    try:
        plan = plan_capacity(planner, args.target_rps, gpu_hourly_usd=price, utilization=args.utilization,
                             max_num_seqs=args.plan_max_num_seqs, min_rps=args.min_rps, slo_text=args.slo)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    overlay = plan.overlay()
    if args.fleet:
        from corral.cluster.spec import SpecError
        from corral.cluster.spec.loader import default_fleet_path, parse_fleet

        path = Path(args.fleet) if args.fleet != "demo" else default_fleet_path()
        doc = yaml.safe_load(path.read_text())
        try:
            parse_fleet(merge_overlay(doc, overlay), source=f"{path} + capacity overlay")
        except SpecError as exc:
            raise CliError(f"the overlay does not fit the fleet: {exc}", EXIT_BAD_INPUT) from None
    header = (f"# corral plan capacity: {args.target_rps:g} rps under {args.slo}\n"
              f"# λ* per replica {plan.lambda_star_per_replica_rps:.3g} rps (measured "
              f"{plan.measured_lambda_star_per_replica_rps:.3g} at max_num_seqs={planner.measured.max_num_seqs}); "
              f"{plan.replicas} replicas, {plan.gpus} GPUs"
              + (f", ${plan.usd_per_hour:.2f}/h" if plan.usd_per_hour is not None else "") + "\n")
    out = Path(args.out) if args.out else Path(args.results) / "capacity-overlay.yaml"
    out.write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    (out.parent / "capacity-plan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    # The fitted per-replica curve, in the format benchmarks/autoscaler_sim.py --curve reads.
    curve = planner.model.latency_curve(max(plan.max_num_seqs, planner.measured.max_num_seqs),
                                        name=f"{plan.arm}-measured",
                                        source=f"corral plan capacity --results {args.results} (arm {plan.arm})")
    curve_path = out.parent / "latency-curve.json"
    curve_path.write_text(json.dumps(curve, indent=2) + "\n")
    predictions = []
    if args.predict_replicas or args.predict_max_num_seqs:
        pred = planner.predict(args.predict_replicas, args.predict_max_num_seqs)
        predictions.append(pred)
    costs = cost_comparison(args, plan.gpus, args.target_rps, planner.model.input_tokens,
                            planner.model.output_tokens, price)
    if args.json:
        print(json.dumps({"plan": plan.to_dict(), "overlay": overlay,
                          "predictions": [p.__dict__ for p in predictions],
                          **({"cost": costs.to_dict()} if costs is not None else {})}, indent=2))
    else:
        cost = "-" if plan.usd_per_hour is None else f"${plan.usd_per_hour:.2f}/h, ${plan.usd_per_million_output_tokens:.3f} per 1M output tokens"
        print(f"arm {plan.arm}: λ* per replica {plan.lambda_star_per_replica_rps:.3g} rps "
              f"(measured {plan.measured_lambda_star_per_replica_rps:.3g} rps with {planner.measured.replicas} replica(s), "
              f"max_num_seqs={planner.measured.max_num_seqs})")
        print(f"  for {args.target_rps:g} rps at {args.utilization:.0%} of λ*: {plan.replicas} replicas, {plan.gpus} GPUs, {cost}")
        print(f"  max_num_seqs {plan.max_num_seqs}, autoscaling target_ongoing_requests {plan.target_ongoing_requests}, "
              f"replicas min {plan.min_replicas} max {plan.replicas}")
        for p in predictions:
            print(f"  predicted λ* with {p.replicas} replica(s), max_num_seqs={p.max_num_seqs}: {p.lambda_star_rps:.3g} rps")
        for w in plan.warnings + [w for p in predictions for w in p.warnings if w not in plan.warnings]:
            print(f"  warning: {w}", file=sys.stderr)
        from corral.cluster.cost import render_lines

        for line in render_lines(costs) if costs is not None else []:
            print(line)
        print(f"overlay   {out}")
        print(f"curve     {curve_path}  (latency vs batch, for benchmarks/autoscaler_sim.py --curve)")
    return 0
