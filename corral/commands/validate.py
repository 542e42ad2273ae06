"""`corral validate [FLEET]`: check a fleet spec without deploying anything."""

from __future__ import annotations

import argparse

from corral.commands._common import add_fleet_arg, load_fleet_or_exit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a fleet spec (exit 2 and the bad field if invalid)")
    add_fleet_arg(p)
    p.add_argument("--no-check-paths", action="store_true",
                   help="do not require local model paths to exist (e.g. paths inside Kubernetes pods)")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    fleet = load_fleet_or_exit(args.fleet, check_paths=not args.no_check_paths)
    print(f"{args.fleet or 'demo fleet'}: valid fleet {fleet.name!r} "
          f"({len(fleet.arms)} arm(s): {', '.join(a.name for a in fleet.arms)}; "
          f"{len(fleet.routes)} route(s): {', '.join(r.name for r in fleet.routes) or '-'})")
    return 0
