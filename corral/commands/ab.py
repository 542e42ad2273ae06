"""`corral ab report`: per-arm statistics with confidence intervals and significance tests,
from per-request JSONL records or from Prometheus (live traffic)."""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime
from pathlib import Path

from corral.commands._common import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, CliError, add_fleet_arg
from corral.commands._cost import add_cost_args, cost_comparison

_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])$")


def parse_time(text: str, now: float) -> float:
    """`now`, unix seconds, ISO 8601 (UTC unless it says otherwise) or an age such as `30m`, `2h`, `-90s`."""
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not `now`, unix seconds, ISO 8601 or an age like 30m") from None
    if dt.tzinfo is None:
        from datetime import timezone

        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab", help="A/B comparison of arms")
    s = p.add_subparsers(dest="ab_cmd", metavar="ACTION", required=True)
    r = s.add_parser(
        "report", help="requests, errors, latency, TTFT, quality, satisfaction, cost per arm",
        description="Per-arm statistics with 95% intervals and a candidate-vs-baseline test, from a JSONL of "
                    "per-request records (--records) or from corral's Prometheus series over a time window "
                    "(--prometheus). Quantiles from Prometheus come from histogram buckets; the bucket holding "
                    "each is named (log-spaced, 12% apart for TTFT/ITL, 26% for latency). Cost per 1M output "
                    "tokens = GPU $/h x GPUs per replica x replica-seconds / 3600 / output tokens x 1e6, with "
                    "replica-seconds integrated from ray_serve_deployment_replica_healthy.")
    add_fleet_arg(r)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", help="JSONL of per-request records (arm, status, latency_s, ...)")
    src.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    r.add_argument("--route", default=None, help="route to report (default: the fleet's rollout route)")
    r.add_argument("--baseline", default=None, help="baseline arm (default: the fleet's rollout baseline)")
    r.add_argument("--candidate", default=None, help="candidate arm (default: the fleet's rollout candidate)")
    r.add_argument("--since", default="1h", help="window start: now, unix seconds, ISO 8601 or an age (30m, 2h)")
    r.add_argument("--until", default="now", help="window end, same forms as --since")
    r.add_argument("--step-s", type=float, default=None, help="resolution of time series and replica-seconds "
                   "(default: window/120, at least 5 s)")
    r.add_argument("--rollout-store", default=None,
                   help="rollout state file for golden-set scores and step marks (default: .corral/rollout-FLEET.json if present)")
    r.add_argument("--gpu-price", type=float, default=None, help="USD per GPU-hour (default: cluster.gpu_hourly_usd)")
    r.add_argument("--duration-s", type=float, default=None,
                   help="--records only: wall time the records cover (default: from their `t` fields)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--html", default=None, metavar="FILE", help="also write an HTML report with plots (--prometheus)")
    add_cost_args(r)
    r.set_defaults(func=run)


def _arms(args, fleet) -> tuple[str, str, str | None]:
    ro = fleet.rollout
    baseline = args.baseline or (ro.baseline if ro else None)
    candidate = args.candidate or (ro.candidate if ro else None)
    route = args.route or (ro.route if ro else None)
    if baseline is None or candidate is None:
        raise CliError("--baseline and --candidate are required when the fleet has no rollout section", EXIT_BAD_INPUT)
    names = [a.name for a in fleet.arms]
    for flag, arm in (("--baseline", baseline), ("--candidate", candidate)):
        if args.prometheus and arm not in names:  # JSONL records may name arms of any fleet
            raise CliError(f"{flag} {arm!r} is not an arm of fleet {fleet.name!r}; arms are {names}", EXIT_BAD_INPUT)
    return baseline, candidate, route


def _print_table(rows, baseline, candidate, title_extra=""):
    from rich.console import Console
    from rich.table import Table

    from corral.rollout.ab import render_rows

    t = Table(title=f"A/B: {baseline} (baseline) vs {candidate}{title_extra}  — 95% CI, * = p < 0.05")
    for col in ("metric", baseline, candidate, "test", "note"):
        t.add_column(col)
    for row in render_rows(rows, baseline, candidate):
        t.add_row(*row)
    Console(width=200).print(t)


def run(args) -> int:
    from corral.commands._common import load_fleet_or_exit

    fleet = load_fleet_or_exit(args.fleet, check_paths=False)
    baseline, candidate, route = _arms(args, fleet)
    price = args.gpu_price if args.gpu_price is not None else fleet.cluster.gpu_hourly_usd
    if args.prometheus:
        return _run_prometheus(args, fleet, baseline, candidate, route, price)
    from corral.rollout.ab import ab_report, group, load_records

    if args.html:
        raise CliError("--html needs --prometheus (the JSONL report has no time series)", EXIT_BAD_INPUT)
    try:
        records = load_records(args.records)
    except (OSError, ValueError) as exc:
        raise CliError(f"--records {args.records!r}: {exc}", EXIT_BAD_INPUT) from None
    duration = args.duration_s
    if duration is None:
        ts = [float(r["t"]) for r in records if "t" in r]
        duration = (max(ts) - min(ts)) if len(ts) > 1 else 0.0
    gpus = {a.name: a.replicas.start * a.engine.devices_per_replica for a in fleet.arms}
    rows = ab_report(group(records), baseline, candidate, duration, price, gpus)
    if args.json:
        from corral.rollout.ab_prometheus import rows_to_json

        print(json.dumps({"baseline": baseline, "candidate": candidate, "rows": rows_to_json(rows)}, indent=2))
    else:
        _print_table(rows, baseline, candidate)
    return 0


def _rollout_doc(args, fleet, route):
    from corral.rollout.store import FileStore

    path = Path(args.rollout_store) if args.rollout_store else Path(".corral") / f"rollout-{fleet.name}.json"
    if not path.exists():
        if args.rollout_store:
            raise CliError(f"--rollout-store {str(path)!r} does not exist", EXIT_BAD_INPUT)
        return None
    doc = FileStore(path).load()
    if doc is None or doc.spec.get("route") != route:
        return None
    return doc


def _run_prometheus(args, fleet, baseline, candidate, route, price) -> int:
    from corral.rollout.ab_prometheus import collect, report, rows_to_json, time_series
    from corral.serving.app import llm_deployment_name
    from corral.serving.prometheus import PrometheusClient, PrometheusError

    if route is None:
        raise CliError("--route is required when the fleet has no rollout section", EXIT_BAD_INPUT)
    if route not in [r.name for r in fleet.routes]:
        raise CliError(f"--route {route!r} is not a route of fleet {fleet.name!r}", EXIT_BAD_INPUT)
    now = time.time()
    try:
        since, until = parse_time(args.since, now), parse_time(args.until, now)
    except ValueError as exc:
        raise CliError(f"--since/--until: {exc}", EXIT_BAD_INPUT) from None
    if since >= until:
        raise CliError(f"--since ({args.since}) must be before --until ({args.until})", EXIT_BAD_INPUT)
    arms = {a.name: a for a in fleet.arms}
    names = [baseline, candidate]
    client = PrometheusClient(args.prometheus)
    try:
        data = collect(client, route, names, since, until, {a: llm_deployment_name(a) for a in names}, args.step_s)
        ts = time_series(client, route, since, until, args.step_s) if args.html else None
    except PrometheusError as exc:
        raise CliError(str(exc), EXIT_ENVIRONMENT) from None
    doc = _rollout_doc(args, fleet, route)
    events: list[tuple[float, str]] = []
    if doc is not None:
        from corral.cluster.spec.rollout import RolloutSpec
        from corral.rollout.quality import load_golden, resolve_golden_path

        spec = RolloutSpec.model_validate(doc.spec)
        try:
            n_prompts = len(load_golden(resolve_golden_path(spec.quality.golden_set, Path(fleet_dir(args)))))
        except (OSError, ValueError):
            n_prompts = 0
        for arm, score in doc.state.quality_scores.items():
            if arm in data and n_prompts:
                data[arm].golden_score, data[arm].golden_prompts = score, n_prompts
        last = None
        for e in doc.events:
            w = e.weights.get(candidate)
            if since <= e.at <= until and (w != last or e.operator in ("rollback", "succeed")):
                events.append((e.at, f"{e.operator} {candidate}={w}%"))
            last = w
    gpus = {a: arms[a].engine.devices_per_replica for a in names}
    rows = report(data, baseline, candidate, until - since, price, gpus)
    cand = data[candidate]
    extra = []
    costs = None
    if cand.requests > 0:
        costs = cost_comparison(args, max(1, round((cand.replica_seconds or 0) / (until - since))) * gpus[candidate],
                                cand.requests / (until - since), cand.input_tokens / cand.requests,
                                cand.output_tokens / cand.requests, price)
    if costs is not None:
        from corral.cluster.cost import render_lines

        extra = [f"candidate {candidate} at its observed load: "] + render_lines(costs)
    if args.json:
        print(json.dumps({"route": route, "baseline": baseline, "candidate": candidate, "since": since, "until": until,
                          "rows": rows_to_json(rows), **({"cost": costs.to_dict()} if costs else {})}, indent=2))
    else:
        _print_table(rows, baseline, candidate, f" on route {route}, {until - since:.0f} s")
        for line in extra:
            print(line)
    if args.html:
        from corral.rollout.ab_html import render_html

        Path(args.html).write_text(render_html(rows, data, ts, baseline, candidate, route, since, until, events, extra))
        if not args.json:
            print(f"html      {args.html}")
    return 0


def fleet_dir(args) -> str:
    """Folder of the fleet file (golden-set paths are relative to it); cwd for the embedded demo."""
    f = getattr(args, "fleet", None)
    return str(Path(f).resolve().parent) if f and f != "demo" and Path(f).exists() else "."
