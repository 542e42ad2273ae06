"""`corral up|status|down`: run a fleet on this machine (local Ray head + Serve)."""

from __future__ import annotations

import argparse

from corral.commands._common import EXIT_FAILURE, add_fleet_arg, domain_errors


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start (or reuse) a local Ray head and deploy or update the fleet in place")
    add_fleet_arg(up)
    up.add_argument("--timeout", type=float, default=900, metavar="S", help="seconds to wait for a healthy fleet (default 900)")
    up.add_argument("--no-prometheus", action="store_true", help="do not start the local Prometheus")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="arms, replicas, health and endpoint of the local fleet")
    st.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="delete the fleet, stop the local Ray head and Prometheus")
    down.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from corral.serving.fleet_ops import apply_fleet

    console = Console(stderr=True)
    with console.status("validating fleet") as status:
        def say(msg: str) -> None:
            status.update(msg)
            # Health polls repeat every 2 s: show them in the spinner only, log the rest.
            if not msg.startswith(("deploying", "running")):
                console.log(msg)
        with domain_errors():
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


def cmd_status(args: argparse.Namespace) -> int:
    from corral.serving.local import LocalCluster, replica_states

    cluster = LocalCluster()
    status = cluster.serve_status()
    if not status or not status.get("applications"):
        print("no fleet is running (start one with `corral up`)")
        return EXIT_FAILURE
    http = status.get("http_options") or {}
    print(f"endpoint: http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/v1")
    for name, app in status["applications"].items():
        print(f"fleet {name}: {app.get('status')}")
        for dname, d in (app.get("deployments") or {}).items():
            states = replica_states(d)
            counts = ", ".join(f"{k.lower()}={v}" for k, v in sorted(states.items())) or "none"
            print(f"  {dname:<28} {d.get('status', '?'):<10} target={d.get('target_num_replicas', '?')} replicas: {counts}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from corral.serving.fleet_ops import stop_fleet

    with domain_errors():
        stop_fleet()
    print("fleet stopped; Ray head and Prometheus stopped")
    return 0
