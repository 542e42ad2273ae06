"""`corral tune ARM --max-num-seqs N FLEET`: set an arm's batch size in the fleet file and re-deploy.

The new value is validated with the whole fleet spec (and the arm's autoscaling rules) before
the file is replaced (cluster/spec/editor.py), then `serving.fleet_ops.apply_fleet` re-deploys
the fleet; Ray Serve rolls the changed arm's replicas one by one (new engine up before an old
one drains), so no request is dropped.
"""

from __future__ import annotations

import argparse

from corral.commands._common import add_fleet_arg, domain_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="set an arm's engine.max_num_seqs in the fleet file and re-deploy",
                       description="Set ARM's engine.max_num_seqs in FLEET and re-deploy it. FLEET is validated "
                                   "with the new value and replaced atomically; comments and formatting in it "
                                   "are not preserved.")
    p.add_argument("arm", help="arm name")
    p.add_argument("--max-num-seqs", type=int, required=True, help="new largest running batch per replica")
    add_fleet_arg(p, required=True)
    p.add_argument("--no-apply", action="store_true", help="only write the file; do not re-deploy")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from corral.cluster.spec.editor import set_max_num_seqs
    from corral.serving.fleet_ops import apply_fleet

    with domain_errors():
        old = set_max_num_seqs(args.fleet, args.arm, args.max_num_seqs)
    print(f"{args.fleet}: arm {args.arm!r} engine.max_num_seqs {old} -> {args.max_num_seqs}")
    if args.no_apply:
        return 0
    with domain_errors():
        apply_fleet(args.fleet)
    print("re-deployed: Serve rolls the arm's replicas one at a time")
    return 0
