"""`corral loadtest [FLEET]`: measure a running fleet the way clients see it (locust, headless).

Writes requests.jsonl, summary.json and report.html into --out; `corral plan capacity` reads them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from corral.commands._common import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, CliError, add_fleet_arg, load_fleet_or_exit

# CLI flag -> LoadConfig field (flags use dashes; every flag's default is the field's default).
_FIELDS = {
    "base_url": ("--base-url", str), "model": ("--model", str), "mode": ("--mode", str),
    "concurrency": ("--concurrency", int), "rate_rps": ("--rate", float), "duration_s": ("--duration", float),
    "warmup_s": ("--warmup", float), "max_requests": ("--max-requests", int),
    "input_tokens": ("--input-tokens", int), "output_tokens": ("--output-tokens", int),
    "trace_path": ("--trace", str), "trace_start_s": ("--trace-start", float),
    "trace_speedup": ("--speedup", float), "trace_keep": ("--trace-keep", float),
    "trace_token_scale": ("--token-scale", float), "max_total_tokens": ("--max-total-tokens", int),
    "sweep_arrival": ("--sweep-arrival", str), "sweep_start_rps": ("--sweep-start", float),
    "sweep_step_rps": ("--sweep-step", float), "sweep_max_rps": ("--sweep-max", float),
    "sweep_failures": ("--sweep-failures", int), "slo": ("--slo", str),
    "max_in_flight": ("--max-in-flight", int), "max_lag_s": ("--max-lag", float),
    "request_timeout_s": ("--request-timeout", float), "seed": ("--seed", int),
    "progress_interval_s": ("--progress-interval", float),
}


def register(sub: argparse._SubParsersAction) -> None:
    from corral.loadtests.config import MODES, LoadConfig

    defaults = LoadConfig()
    docs = {
        "mode": f"arrival mode: {' | '.join(MODES)}",
        "duration_s": "measured seconds per stage (after warm-up)",
        "warmup_s": "seconds at the start of each stage excluded from the results",
        "slo": "SLO, e.g. ttft_p95=0.5,itl_p95=50ms (required for --mode sweep)",
        "trace_speedup": "trace time compression (10 = ten times the recorded rate)",
        "rate_rps": "offered requests/s (constant, poisson)",
        "trace_keep": "share of the trace's requests to send (seeded thinning, keeps burst timing)",
        "trace_token_scale": "factor on the trace's prompt and answer lengths",
        "sweep_failures": "sweep: stop after this many consecutive stages that miss the SLO",
    }
    p = sub.add_parser("loadtest", help="measure a running fleet (TTFT, ITL, throughput, SLO attainment)",
                       description=__doc__)
    for name, (flag, typ) in _FIELDS.items():
        p.add_argument(flag, dest=name, type=typ, default=getattr(defaults, name),
                       help=f"{docs.get(name, name.replace('_', ' '))} (default: {getattr(defaults, name)})")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default /v1/completions)")
    p.add_argument("--no-force-output", dest="force_output", action="store_false",
                   help="do not send ignore_eos/min_tokens (for engines that reject them)")
    p.add_argument("--no-calibrate", dest="calibrate_tokens", action="store_false",
                   help="assume one prompt token per word instead of probing the server's usage")
    p.add_argument("--out", default=None, help="results folder (default: loadtest-results/<time>)")
    add_fleet_arg(p, help="fleet spec of the fleet under test, optional: its replicas and max_num_seqs are "
                          "recorded for `corral plan capacity` (nothing is recorded without it)")
    p.set_defaults(func=cmd_loadtest)


def deployment_from_fleet(path: str, model: str) -> dict:
    """Replicas, max_num_seqs and devices of the arms behind `model`, from a fleet spec."""
    fleet = load_fleet_or_exit(path, check_paths=False)
    route = next((r for r in fleet.effective_routes() if r.name == model), None)
    if route is None:
        names = [r.name for r in fleet.effective_routes()]
        raise CliError(f"--model {model!r} is not a route or arm of FLEET {path} (has {names})", EXIT_BAD_INPUT)
    arms = {}
    for ra in route.arms:
        arm = fleet.arm(ra.arm)
        arms[arm.name] = {"weight": ra.weight, "replicas": arm.replicas.start,
                          "max_num_seqs": arm.engine.max_num_seqs,
                          "devices_per_replica": arm.engine.devices_per_replica}
    return {"fleet": fleet.name, "device": fleet.cluster.device, "gpu_type": fleet.cluster.gpu_type,
            "gpu_hourly_usd": fleet.cluster.gpu_hourly_usd, "arms": arms}


def cmd_loadtest(args: argparse.Namespace) -> int:
    from corral.loadtests.config import LoadConfig

    values = {f.name: getattr(args, f.name) for f in fields(LoadConfig) if hasattr(args, f.name)}
    try:
        config = LoadConfig(**values).validate()
    except ValueError as exc:
        flag = next((fl for name, (fl, _) in _FIELDS.items() if str(exc).startswith(name + "=")), None)
        raise CliError(f"{flag + ': ' if flag else ''}{exc}", EXIT_BAD_INPUT) from None
    deployment = deployment_from_fleet(args.fleet, config.model) if args.fleet else None
    out = args.out or f"loadtest-results/{time.strftime('%Y%m%d-%H%M%S')}"

    from corral.loadtests import runner
    from corral.loadtests.report import write_results

    try:
        result = runner.run(config)
    except RuntimeError as exc:
        if "calibration probe" in str(exc):
            raise CliError(f"{exc} (is the fleet up at {config.base_url}?)", EXIT_ENVIRONMENT) from None
        raise
    summary, records = build_summary(result, deployment)
    paths = write_results(out, summary, records)
    print_table(summary)
    for kind, path in paths.items():
        print(f"{kind:9s} {path}")
    return 0


def build_summary(result, deployment: dict | None) -> tuple[dict, list]:
    from corral.loadtests.report import summarize

    c = result.config
    run_meta = {
        "config": c.to_dict(),
        "calibration": {"overhead": result.calibration.overhead,
                        "tokens_per_word": result.calibration.tokens_per_word},
        "stopped": result.stopped,
        "deployment": deployment,
    }
    stage_records = [({"name": s.plan.name, "duration_s": s.plan.duration_s, "rate_rps": s.plan.rate_rps,
                       "concurrency": s.plan.concurrency, "started_unix": s.started_unix}, s.records)
                     for s in result.stages]
    summary = summarize(run_meta, stage_records, c.slo, c.max_lag_s)
    records = [r for s in result.stages for r in s.records]
    return summary, records


def print_table(summary: dict) -> None:
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    print(f"{'stage':>18} {'req':>5} {'err':>4} {'rps':>7} {'ttft50':>7} {'ttft95':>7} {'itl95':>7} "
          f"{'tpot50':>7} {'lag99':>7} slo")
    for s in summary["stages"]:
        slo = "-" if not s["slo"] else ("met" if s["slo"]["met"] else "MISSED")
        print(f"{s['name']:>18} {s['requests']:5d} {s['errors']:4d} {s['throughput_rps']:7.2f} "
              f"{f(s['ttft_s']['p50']):>7} {f(s['ttft_s']['p95']):>7} {f(s['itl_s']['p95']):>7} "
              f"{f(s['tpot_s']['p50']):>7} {f(s['lag_s']['p99']):>7} {slo}")
    for w in summary["warnings"]:
        print(f"warning: {w}")
