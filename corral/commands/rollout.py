"""`corral rollout start|run|status|pause|resume|promote|abort|history`.

The rollout's state lives in a store (a local JSON file, or an annotation on the RayService
with --kube); pause/resume/promote/abort queue a command there and the running controller
(`corral rollout run`, or `start --run`) picks it up on its next tick.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from corral.commands._common import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, CliError, add_fleet_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="staged canary rollouts with metric and quality gates")
    rs = p.add_subparsers(dest="rollout_cmd", metavar="ACTION", required=True)

    def common(sp, fleet=True):
        if fleet:
            add_fleet_arg(sp)
        sp.add_argument("--store", default=None, help="state file (default .corral/rollout-<fleet>.json)")
        sp.add_argument("--kube", metavar="RAYSERVICE", default=None,
                        help="keep state on this RayService (annotation) and actuate through KubeRay")
        sp.add_argument("--namespace", default="default", help="Kubernetes namespace of --kube")

    sp = rs.add_parser("start", help="start the rollout declared in the fleet's `rollout:` section")
    common(sp)
    sp.add_argument("--force", action="store_true", help="replace an active rollout")
    sp.add_argument("--run", action="store_true", help="also run the controller here, with a live view")
    _run_args(sp)
    sp.set_defaults(func=cmd_start)
    sp = rs.add_parser("run", help="run (or resume) the controller of the stored rollout")
    common(sp)
    _run_args(sp)
    sp.set_defaults(func=cmd_run)
    sp = rs.add_parser("status", help="phase, step, weights, latest gates")
    common(sp)
    sp.add_argument("--watch", action="store_true", help="refresh until the rollout ends")
    sp.set_defaults(func=cmd_status)
    for op, helptext in (("pause", "hold the current weights"), ("resume", "continue a paused rollout"),
                         ("promote", "skip to the next step"), ("abort", "roll back to the baseline now")):
        sp = rs.add_parser(op, help=helptext)
        common(sp)
        sp.add_argument("--reason", default="", help="recorded in the history")
        if op == "promote":
            sp.add_argument("--full", action="store_true", help="go straight to 100%%")
        sp.set_defaults(func=cmd_command, op=op)
    sp = rs.add_parser("history", help="the rollout's events")
    common(sp)
    sp.set_defaults(func=cmd_history)
    sp = rs.add_parser("alive", help="liveness check of `run --daemon`: is its heartbeat file fresh?")
    sp.add_argument("--heartbeat-file", required=True, help="the file `run --daemon --heartbeat-file` touches")
    sp.add_argument("--max-age-s", type=float, default=120.0, help="oldest acceptable heartbeat, seconds")
    sp.set_defaults(func=cmd_alive)


def _run_args(sp):
    sp.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    sp.add_argument("--prometheus-scope", metavar="LABEL=VALUE,...", default=None,
                    help="label matchers added to every corral series the gates query (default: with --kube "
                         "namespace=<--namespace>, as prometheus-operator labels scraped series; '' for none)")
    sp.add_argument("--endpoint", default=None,
                    help="OpenAI endpoint for the golden set (default: the fleet's server, 0.0.0.0 as 127.0.0.1)")
    sp.add_argument("--api-key-env", metavar="NAME", default=None,
                    help="send the API key in this environment variable with golden-set requests")
    sp.add_argument("--dashboard", metavar="URL", default=None,
                    help="Ray dashboard serving Serve's REST API (default: with --kube http://<rayservice>-head-svc.<ns>.svc:8265, "
                         "else the local head's, port 8265)")
    sp.add_argument("--tick-s", type=float, default=None, help="seconds between controller ticks")
    sp.add_argument("--daemon", action="store_true",
                    help="run for ever: wait for a rollout, run it, wait for the next (SIGTERM stops)")
    sp.add_argument("--heartbeat-file", default=None, help="touched every loop (see `corral rollout alive`)")


def _rollout_spec(fleet_path: str | None):
    """The fleet and its `rollout:` section (validated with the fleet)."""
    from corral.commands._common import load_fleet_or_exit

    fleet = load_fleet_or_exit(fleet_path, check_paths=False)
    if fleet.rollout is None:
        raise CliError(f"{fleet_path or 'demo fleet'}: no `rollout:` section", EXIT_BAD_INPUT)
    return fleet, fleet.rollout


def _store(args, fleet_name: str):
    from corral.rollout.store import FileStore, RayServiceAnnotationStore

    if args.kube:
        try:
            return RayServiceAnnotationStore(args.kube, args.namespace)
        except Exception as exc:  # kubeconfig missing, etc.
            raise CliError(f"cannot reach Kubernetes: {exc}", EXIT_ENVIRONMENT) from None
    return FileStore(args.store or Path(".corral") / f"rollout-{fleet_name}.json")


def _load(args):
    from corral.commands._common import load_fleet_or_exit

    fleet = load_fleet_or_exit(args.fleet, check_paths=False)
    store = _store(args, fleet.name)
    doc = store.load()
    if doc is None:
        raise CliError("no rollout found; start one with `corral rollout start FLEET`", EXIT_BAD_INPUT)
    return fleet, store, doc


def cmd_start(args) -> int:
    from corral.rollout.controller import RolloutConflict, start_rollout

    if args.daemon:
        raise CliError("--daemon belongs to `corral rollout run`", EXIT_BAD_INPUT)
    fleet, spec = _rollout_spec(args.fleet)
    store = _store(args, fleet.name)
    wiring = _wiring(args, fleet, store) if args.run else None  # bad flags fail before anything is stored
    try:
        doc = start_rollout(store, spec, time.time(), force=args.force)
    except RolloutConflict as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    print(f"rollout {doc.id}: route {spec.route}: {spec.baseline} -> {spec.candidate}, steps "
          f"{[s.weight for s in spec.steps]}", flush=True)
    if wiring is None:
        return 0
    return _run_controller(args, spec, store, wiring)


def cmd_run(args) -> int:
    from corral.cluster.spec.rollout import RolloutSpec

    if args.daemon:
        from corral.commands._common import load_fleet_or_exit

        fleet = load_fleet_or_exit(args.fleet, check_paths=False)
        return _run_daemon(args, fleet, _store(args, fleet.name))
    fleet, store, doc = _load(args)
    return _run_controller(args, RolloutSpec.model_validate(doc.spec), store, _wiring(args, fleet, store))


def _actuator(args, fleet):
    from corral.rollout import actuators

    if args.kube:
        try:
            return actuators.KubeRayActuator(args.kube, args.namespace, app_name=fleet.name,
                                             dashboard_url=args.dashboard)
        except Exception as exc:  # kubeconfig missing, etc.
            raise CliError(f"cannot reach Kubernetes: {exc}", EXIT_ENVIRONMENT) from None
    cluster = None
    if args.dashboard:
        from urllib.parse import urlparse

        from corral.serving.local import LocalCluster

        port = urlparse(args.dashboard).port
        if port is None:
            raise CliError(f"--dashboard {args.dashboard}: give the port (e.g. http://127.0.0.1:8265)", EXIT_BAD_INPUT)
        cluster = LocalCluster(dashboard_port=port)
    return actuators.LocalServeActuator(fleet.name, cluster=cluster)


def _wiring(args, fleet, store) -> dict:
    """What every controller of this process shares (build_controller's keyword arguments)."""
    import os

    from corral.rollout.quality import local_endpoint

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise CliError(f"--api-key-env: environment variable {args.api_key_env} is not set", EXIT_BAD_INPUT)
    from corral.serving.prometheus import parse_scope

    scope_text = args.prometheus_scope
    if scope_text is None:
        scope_text = f"namespace={args.namespace}" if args.kube else ""
    try:
        scope = parse_scope(scope_text)
    except ValueError as exc:
        raise CliError(f"--prometheus-scope: {exc}", EXIT_BAD_INPUT) from None
    return dict(max_replicas={a.name: a.replicas.max for a in fleet.arms}, actuator=_actuator(args, fleet),
                store=store, prometheus_url=args.prometheus, prometheus_scope=scope,
                endpoint=args.endpoint or local_endpoint(fleet.server.host, fleet.server.port), api_key=api_key,
                base_dir=Path(args.fleet).resolve().parent if args.fleet else None, tick_s=args.tick_s)


def _run_daemon(args, fleet, store) -> int:
    import sys
    import threading

    from corral.rollout.daemon import Daemon, LogLines, build_controller, stop_on_sigterm

    wiring = _wiring(args, fleet, store)
    log = LogLines(sys.stdout)
    stop = threading.Event()
    stop_on_sigterm(stop)

    heartbeat = Path(args.heartbeat_file) if args.heartbeat_file else None

    def make(doc, spec):
        return build_controller(spec, **wiring, rollout_id=doc.id, on_decision=log.decisions(doc.id, spec),
                                on_error=log.error, heartbeat=heartbeat)

    return Daemon(store, make, log, idle_s=args.tick_s or 5.0, heartbeat=heartbeat, stop=stop).run()


def _run_controller(args, spec, store, wiring: dict) -> int:
    import sys

    from corral.rollout.daemon import LogLines, build_controller, touch

    doc_id = store.load().id
    heartbeat = Path(args.heartbeat_file) if args.heartbeat_file else None
    ctl = build_controller(spec, **wiring, rollout_id=doc_id, heartbeat=heartbeat)

    def sleep(s):
        touch(heartbeat, time.time())
        time.sleep(s)

    if sys.stdout.isatty():
        from rich.live import Live

        with Live(status_view(store.load()), refresh_per_second=2) as live:
            ctl.on_decision = lambda d, s: live.update(status_view(store.load()))
            state = ctl.run(sleep=sleep)
    else:  # rich.Live writes nothing to a pipe: plain lines instead
        log = LogLines(sys.stdout)
        ctl.on_decision, ctl.on_error = log.decisions(doc_id, spec), log.error
        state = ctl.run(sleep=sleep)
    print(f"rollout {state.phase.value}: {state.reason}")
    return 0 if state.phase.value == "Succeeded" else 1


def status_view(doc):
    from rich.table import Table

    from corral.cluster.spec.rollout import RolloutSpec

    spec = RolloutSpec.model_validate(doc.spec)
    s = doc.state
    t = Table(title=f"rollout {doc.id}: {spec.route}  {spec.baseline} -> {spec.candidate}", show_header=False)
    t.add_row("phase", s.phase.value + (f" ({s.pause_reason})" if s.pause_reason else ""))
    bar = "".join("#" if i <= s.step else "." for i in range(len(spec.steps)))
    t.add_row("step", f"{s.step + 1}/{len(spec.steps)} [{bar}] {spec.steps[s.step].weight}%  stage {s.stage.value}")
    t.add_row("weights", ", ".join(f"{k}={v}" for k, v in s.desired_weights.items()) or "-")
    if s.step_started_at is not None and s.stage.value == "baking":
        left = max(0.0, spec.steps[s.step].bake_s - (time.time() - s.step_started_at))
        t.add_row("bake left", f"{left:.0f}s")
    if s.stage.value == "shadow":
        left = "" if s.step_started_at is None else \
            f"; {max(0.0, spec.shadow.duration_s - (time.time() - s.step_started_at)):.0f}s left"
        t.add_row("shadow", f"{spec.shadow.percent:g}% of {spec.route} copied to {spec.candidate}, answers "
                            f"discarded; users on {spec.baseline}{left}")
    t.add_row("failures", f"{s.failures}/{spec.failure_limit} tolerated; inconclusive {s.inconclusive}; errors {s.errors}")
    if s.quality_scores:
        t.add_row("quality", ", ".join(f"{k}={v:.2f}" for k, v in s.quality_scores.items()))
    for g in s.last_gates:
        note = " (advisory: can fail the stage, never holds it)" if g.get("advisory") else ""
        t.add_row(f"gate {g['gate']}", f"{g['verdict']}{note}: {g['message']}")
    t.add_row("last", s.reason)
    return t


def cmd_status(args) -> int:
    from rich.console import Console
    from rich.live import Live

    fleet, store, doc = _load(args)
    if not args.watch:
        Console().print(status_view(doc))
        return 0
    with Live(status_view(doc), refresh_per_second=1) as live:
        while not doc.state.terminal:
            time.sleep(1)
            doc = store.load()
            live.update(status_view(doc))
    return 0


def cmd_command(args) -> int:
    from corral.rollout.controller import enqueue_command

    fleet, store, doc = _load(args)
    if doc.state.terminal:
        raise CliError(f"rollout {doc.id} already {doc.state.phase.value}", EXIT_BAD_INPUT)
    seq = enqueue_command(store, args.op, time.time(), full=getattr(args, "full", False), reason=args.reason)
    print(f"queued {args.op} (#{seq}) for rollout {doc.id}; the controller applies it on its next tick")
    return 0


def cmd_alive(args) -> int:
    from corral.rollout.daemon import heartbeat_age

    age = heartbeat_age(Path(args.heartbeat_file), time.time())
    if age is None:
        print(f"not alive: no heartbeat file {args.heartbeat_file}")
        return 1
    if age > args.max_age_s:
        print(f"not alive: heartbeat {age:.0f}s old (max {args.max_age_s:g}s)")
        return 1
    print(f"alive: heartbeat {age:.0f}s old")
    return 0


def cmd_history(args) -> int:
    from rich.console import Console
    from rich.table import Table

    fleet, store, doc = _load(args)
    t = Table(title=f"rollout {doc.id}")
    for col in ("time", "event", "phase", "step", "weights", "reason"):
        t.add_column(col)
    for e in doc.events:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e.at)), e.operator, e.phase, str(e.step + 1),
                  ", ".join(f"{k}={v}" for k, v in e.weights.items()), e.reason)
    Console(width=200).print(t)
    return 0
