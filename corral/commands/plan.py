"""`corral plan cluster|capacity`: the two planners (pure functions behind thin CLI glue)."""

from __future__ import annotations

import argparse

from corral.commands import _plan_capacity, _plan_cluster


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan parallelism and GPUs (cluster) or replicas and cost from load tests (capacity)")
    psub = p.add_subparsers(dest="plan_command", metavar="PLANNER", required=True)
    _plan_cluster.register(psub)
    _plan_capacity.register(psub)
