"""`corral dashboards push`: upload the chart's Grafana dashboards with grafana-client.

Untested against a live Grafana (none runs in this project's environment); the dashboards
themselves ship in helm/corral/dashboards (and in the wheel) and reach Grafana through the sidecar on Kubernetes.
"""

from __future__ import annotations

import argparse
import os

from corral.commands._common import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards of the fleet")
    dsub = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    push = dsub.add_parser("push", help="create or update the fleet, per-arm and rollout dashboards in Grafana")
    push.add_argument("--url", default=os.environ.get("GRAFANA_URL", "http://127.0.0.1:3000"),
                      help="Grafana base URL (env GRAFANA_URL)")
    push.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"),
                      help="service account token (env GRAFANA_TOKEN); else --user/--password")
    push.add_argument("--user", default=os.environ.get("GRAFANA_USER", "admin"))
    push.add_argument("--password", default=os.environ.get("GRAFANA_PASSWORD"))
    push.add_argument("--folder", default="corral", help="Grafana folder (created if missing)")
    push.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    try:
        from grafana_client import GrafanaApi
    except ImportError:
        raise CliError("grafana-client is not installed: pip install grafana-client", EXIT_ENVIRONMENT) from None
    from corral.cluster.dashboards import load_dashboards

    if not args.token and not args.password:
        raise CliError("--token or --password is required (or GRAFANA_TOKEN / GRAFANA_PASSWORD)", EXIT_BAD_INPUT)
    auth = args.token if args.token else (args.user, args.password)
    api = GrafanaApi.from_url(args.url, credential=auth)
    try:
        folders = {f["title"]: f for f in api.folder.get_all_folders()}
        folder = folders.get(args.folder) or api.folder.create_folder(args.folder)
        for name, dash in load_dashboards().items():
            api.dashboard.update_dashboard({"dashboard": {**dash, "id": None}, "folderUid": folder["uid"],
                                            "overwrite": True, "message": "corral dashboards push"})
            print(f"pushed {name}: {dash['title']} -> {args.url} folder {args.folder!r}")
    except Exception as exc:  # grafana-client raises several transport/HTTP error types
        raise CliError(f"Grafana at {args.url}: {exc}", EXIT_ENVIRONMENT) from None
    return 0
