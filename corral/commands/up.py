"""`corral up|status|down`: run a fleet on this machine (local Ray head + Serve)."""

from __future__ import annotations

import argparse

from corral.commands._common import CliError, add_fleet_arg, load_fleet_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start (or reuse) a local Ray head and deploy or update the fleet in place")
    add_fleet_arg(up)
    up.add_argument("--timeout", type=float, default=900, metavar="S", help="seconds to wait for a healthy fleet (default 900)")
    up.add_argument("--no-prometheus", action="store_true", help="do not start the local Prometheus")
    up.set_defaults(func=run_up)
    st = sub.add_parser("status", help="arms, replicas, health and endpoint of the local fleet")
    st.set_defaults(func=run_status)
    down = sub.add_parser("down", help="delete the fleet, stop the local Ray head and Prometheus")
    down.set_defaults(func=run_down)


def apply_fleet(path: str | None, timeout_s: float = 900, prometheus: bool = True, say=print):
    """Validate, prepare models, start Ray if needed, deploy, wait until healthy.

    Nothing is deployed from an invalid spec: validation and model checks come first.
    Returns the FleetSpec that is now running.
    """
    from corral.serving.local import LocalCluster, LocalError, memory_check, parallelism_check, prepare_models
    from corral.serving.prometheus import LocalPrometheus

    fleet = load_fleet_or_exit(path)
    cluster = LocalCluster()
    try:
        prepare_models(fleet, say)
        parallelism_check(fleet, cluster.home, say)
        memory_check(fleet, running=cluster.ray_running() and cluster.app_status(fleet.name) is not None)
        if cluster.start_ray(fleet):
            say("started a local Ray head")
        else:
            say("reusing the running Ray head")
        cluster.deploy(fleet)
        cluster.wait_healthy(fleet, timeout_s, say)
    except LocalError as exc:
        raise CliError(str(exc), exc.code) from None
    if prometheus:
        prom = LocalPrometheus(cluster.home / "prometheus")
        try:
            prom.start()
            say(f"Prometheus: {prom.url} (scraping Ray metrics on :{fleet.server.metrics_port})")
        except (FileNotFoundError, RuntimeError) as exc:
            say(f"Prometheus not started: {exc}")
    return fleet


def run_up(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("validating fleet") as status:
        def say(msg: str) -> None:
            status.update(msg)
            # Health polls repeat every 2 s: show them in the spinner only, log the rest.
            if not msg.startswith(("deploying", "running")):
                console.log(msg)
        fleet = apply_fleet(args.fleet, args.timeout, not args.no_prometheus, say)
    host = "127.0.0.1" if fleet.server.host in ("0.0.0.0", "") else fleet.server.host
    base = f"http://{host}:{fleet.server.port}/v1"
    model = fleet.routes[0].name if fleet.routes else fleet.arms[0].name
    print(f"fleet {fleet.name!r} is up: {base}")
    print(f"  arms:   {', '.join(a.name for a in fleet.arms)}")
    if fleet.routes:
        print("  routes: " + "; ".join(f"{r.name} -> " + ", ".join(f"{a.arm} {a.weight}%" for a in r.arms) for r in fleet.routes))
    print("next steps:")
    print(f"  curl {base}/chat/completions -H 'Content-Type: application/json' \\")
    print(f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'")
    print("  corral status    # arms, replicas, health")
    print("  corral down      # stop everything")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from corral.serving.local import LocalCluster, replica_states

    cluster = LocalCluster()
    status = cluster.serve_status()
    if not status or not status.get("applications"):
        print("no fleet is running (start one with `corral up`)")
        return 1
    http = status.get("http_options") or {}
    print(f"endpoint: http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/v1")
    for name, app in status["applications"].items():
        print(f"fleet {name}: {app.get('status')}")
        for dname, d in (app.get("deployments") or {}).items():
            states = replica_states(d)
            counts = ", ".join(f"{k.lower()}={v}" for k, v in sorted(states.items())) or "none"
            print(f"  {dname:<28} {d.get('status', '?'):<10} target={d.get('target_num_replicas', '?')} replicas: {counts}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from corral.serving.local import LocalCluster
    from corral.serving.prometheus import LocalPrometheus

    cluster = LocalCluster()
    if cluster.ray_running():
        cluster.delete_apps()
    cluster.stop_ray()
    LocalPrometheus(cluster.home / "prometheus").stop()
    print("fleet stopped; Ray head and Prometheus stopped")
    return 0
