"""`corral plan capacity [FLEET]`: size an arm from `corral loadtest` results.

Registered by `corral plan` (corral/commands/plan.py) through `register(plan_subparsers)`.
The planner is fitted by `corral.loadtests.planning.load_planner`; the overlay is merged into
FLEET by `corral.cluster.spec.editor`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from corral.commands._common import EXIT_BAD_INPUT, CliError, add_fleet_arg
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
    p.add_argument("--predict-prompt-tokens", type=float, default=None,
                   help="also predict λ* with this mean prompt length (the measured prompts scaled)")
    p.add_argument("--predict-output-tokens", type=float, default=None,
                   help="also predict λ* with this mean output length (the measured outputs scaled)")
    add_fleet_arg(p, help="fleet spec the overlay is merged into by arm name and checked against "
                          "(optional: without it the overlay is not checked)")
    p.add_argument("--write", action="store_true",
                   help="also write the merged overlay into FLEET (validated, replaced atomically; comments and "
                        "formatting in FLEET are not preserved)")
    p.add_argument("--out", default=None, help="overlay YAML path (default: RESULTS/capacity-overlay.yaml); "
                   "capacity-plan.json and latency-curve.json (for the autoscaler simulator) go beside it")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_cost_args(p)
    p.set_defaults(func=cmd_capacity)


# Flag of each planner input, for error messages.
_FLAGS = {"slo": "--slo", "results": "--results", "arm": "--arm", "replicas": "--replicas/--max-num-seqs"}


def load_planner(results: str, slo: str, arm: str | None = None, replicas: int | None = None,
                 max_num_seqs: int | None = None, devices_per_replica: int | None = None) -> tuple[Any, dict[str, Any]]:
    """`corral.loadtests.planning.load_planner` with its errors as CliError (exit 2) naming the flag."""
    from corral.loadtests.planning import PlanningInputError
    from corral.loadtests.planning import load_planner as fit

    try:
        return fit(results, slo, arm, replicas, max_num_seqs, devices_per_replica)
    except PlanningInputError as exc:
        flag = _FLAGS.get(exc.field, exc.field)
        where = f"{flag} {results}" if exc.field == "results" else flag
        raise CliError(f"{where}: {exc}", EXIT_BAD_INPUT) from None


def model_lines(planner: Any) -> list[str]:
    """The fitted engine model and its residual check (model vs measured on the measured stages)."""
    e, f = planner.engine, planner.step_fit
    lines = [f"engine model ({planner.fit_source}): step = {e.step.base_s * 1e3:.3f} ms "
             f"+ {e.step.per_decode_seq_s * 1e3:.3f} ms/decode seq + {e.step.per_prefill_token_s * 1e6:.2f} µs/prefill token "
             f"+ {e.step.per_kv_token_s * 1e6:.3f} µs/context token; host overhead {e.host_overhead_s * 1e3:.1f} ms/request; "
             f"fit rms {f.rms_residual_s * 1e3:.2f} ms on a mean step of {f.mean_step_s * 1e3:.2f} ms",
             f"residual check at the measured configuration: λ* per replica model {planner.model_lambda_at_measured:.3g} "
             f"vs measured {planner.lam.per_replica_rps:.3g} rps",
             "  stage            rps   " + "  ".join(f"{c.key:>17}" for c in planner.clauses)
             + "   ttft p50 meas/model   tpot mean meas/model"]
    for r in planner.residuals:
        att = "  ".join(f"{_pct(r.measured_attainment[c.key]):>8}/{_pct(r.model_attainment[c.key]):<8}" for c in planner.clauses)
        lines.append(f"  {r.name:<14} {r.rate_rps:6.3g}   {att}   {_s(r.measured_ttft_p50_s):>8}/{_s(r.model_ttft_p50_s):<8}"
                     f"     {_s(r.measured_tpot_mean_s):>8}/{_s(r.model_tpot_mean_s):<8}")
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}s"


def cmd_capacity(args: argparse.Namespace) -> int:
    import yaml

    from corral.loadtests.capacity import ExtrapolationError, plan_capacity

    planner, summary = load_planner(args.results, args.slo, args.arm, args.replicas, args.max_num_seqs,
                                    args.devices_per_replica)
    price = args.gpu_price if args.gpu_price is not None else (summary.get("deployment") or {}).get("gpu_hourly_usd")
    predictions = []
    try:
        plan = plan_capacity(planner, args.target_rps, gpu_hourly_usd=price, utilization=args.utilization,
                             max_num_seqs=args.plan_max_num_seqs, min_rps=args.min_rps, slo_text=args.slo)
        if args.predict_replicas or args.predict_max_num_seqs or args.predict_prompt_tokens or args.predict_output_tokens:
            predictions.append(planner.predict(args.predict_replicas, args.predict_max_num_seqs,
                                               args.predict_prompt_tokens, args.predict_output_tokens))
    except ExtrapolationError as exc:
        flag = {"max_num_seqs": "--predict-max-num-seqs" if args.predict_max_num_seqs else "--plan-max-num-seqs",
                "prompt_tokens": "--predict-prompt-tokens", "output_tokens": "--predict-output-tokens"}[exc.field]
        raise CliError(f"{flag}: refused to extrapolate: {exc}", EXIT_BAD_INPUT) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    overlay = plan.overlay()
    if args.write and not args.fleet:
        raise CliError("--write needs FLEET (the fleet file to merge the overlay into)", EXIT_BAD_INPUT)
    if args.fleet:
        from corral.cluster.spec import SpecError
        from corral.cluster.spec.editor import apply_change, edit_fleet_file, merge_overlay, read_fleet_document

        def merge(doc: dict[str, Any]) -> None:
            merged = merge_overlay(doc, overlay)
            doc.clear()
            doc.update(merged)

        try:
            if args.write:
                edit_fleet_file(args.fleet, merge, where="capacity overlay")
            else:
                apply_change(read_fleet_document(args.fleet), merge, source=f"{args.fleet} + capacity overlay",
                             where="capacity overlay")
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
    curve = planner.latency_curve(max(plan.max_num_seqs, planner.measured.max_num_seqs),
                                        name=f"{plan.arm}-measured",
                                        source=f"corral plan capacity --results {args.results} (arm {plan.arm})")
    curve_path = out.parent / "latency-curve.json"
    curve_path.write_text(json.dumps(curve, indent=2) + "\n")
    costs = cost_comparison(args, plan.gpus, args.target_rps, planner.input_tokens, planner.output_tokens, price)
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
            print(f"  predicted λ* with {p.replicas} replica(s), max_num_seqs={p.max_num_seqs}: {p.lambda_star_rps:.3g} rps"
                  f" (replay alone: {p.model_lambda_star_rps:.3g})")
        for line in model_lines(planner):
            print(line)
        for w in plan.warnings + [w for p in predictions for w in p.warnings if w not in plan.warnings]:
            print(f"  warning: {w}", file=sys.stderr)
        from corral.cluster.cost import render_lines

        for line in render_lines(costs) if costs is not None else []:
            print(line)
        print(f"overlay   {out}")
        if args.write:
            print(f"fleet     {args.fleet}  (overlay merged in; apply with `corral up {args.fleet}`)")
        print(f"curve     {curve_path}  (latency vs batch, for benchmarks/autoscaler_sim.py --curve)")
    return 0
