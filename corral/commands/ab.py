"""`corral ab report`: per-arm statistics with confidence intervals and significance tests."""

from __future__ import annotations

import argparse

from corral.commands._common import EXIT_BAD_INPUT, CliError, add_fleet_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab", help="A/B comparison of arms")
    s = p.add_subparsers(dest="ab_cmd", metavar="ACTION", required=True)
    r = s.add_parser("report", help="requests, errors, latency, TTFT, quality, satisfaction, cost per arm")
    add_fleet_arg(r)
    r.add_argument("--records", required=True, help="JSONL of per-request records (arm, status, latency_s, ...)")
    r.add_argument("--baseline", required=True)
    r.add_argument("--candidate", required=True)
    r.add_argument("--duration-s", type=float, default=None,
                   help="wall time the records cover (default: from their `t` fields)")
    r.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from corral.commands._common import load_fleet_or_exit
    from corral.rollout.ab import ab_report, group, load_records, render_rows

    fleet = load_fleet_or_exit(args.fleet, check_paths=False)
    try:
        records = load_records(args.records)
    except (OSError, ValueError) as exc:
        raise CliError(f"--records {args.records!r}: {exc}", EXIT_BAD_INPUT) from None
    duration = args.duration_s
    if duration is None:
        ts = [float(r["t"]) for r in records if "t" in r]
        duration = (max(ts) - min(ts)) if len(ts) > 1 else 0.0
    gpus = {a.name: a.replicas.start * a.engine.devices_per_replica for a in fleet.arms}
    rows = ab_report(group(records), args.baseline, args.candidate, duration, fleet.cluster.gpu_hourly_usd, gpus)
    t = Table(title=f"A/B: {args.baseline} (baseline) vs {args.candidate}  — 95% CI, * = p < 0.05")
    for col in ("metric", args.baseline, args.candidate, "test"):
        t.add_column(col)
    for row in render_rows(rows, args.baseline, args.candidate):
        t.add_row(*row)
    Console(width=160).print(t)
    return 0
