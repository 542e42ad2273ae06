"""`corral tune ARM --max-num-seqs N [FLEET]`: set an arm's batch size in the fleet file.

The new value is validated with the whole fleet spec before the file is written, then
`corral.commands.up.apply_fleet(path)` re-deploys the fleet; Ray Serve rolls the changed
arm's replicas one by one (new engine up before an old one drains), so no request is dropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from corral.commands._common import EXIT_BAD_INPUT, CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="set an arm's engine.max_num_seqs in the fleet file and re-deploy")
    p.add_argument("arm", help="arm name")
    p.add_argument("--max-num-seqs", type=int, required=True, help="new largest running batch per replica")
    p.add_argument("fleet", nargs="?", default=None, help="fleet spec YAML (default: the demo fleet)")
    p.add_argument("--no-apply", action="store_true", help="only write the file; do not re-deploy")
    p.set_defaults(func=run)


def set_max_num_seqs(path: Path, arm: str, value: int) -> int:
    """Validate and write the new `engine.max_num_seqs` of `arm` in the fleet file at `path`.
    Returns the previous value. Raises CliError (exit 2) naming the problem; the file is
    untouched unless the new document is a valid fleet."""
    from corral.cluster.spec import SpecError, parse_fleet

    data = yaml.safe_load(path.read_text())
    arms = data.get("arms") if isinstance(data, dict) else None
    entry = next((a for a in arms or [] if isinstance(a, dict) and a.get("name") == arm), None)
    if entry is None:
        names = [a.get("name") for a in arms or [] if isinstance(a, dict)]
        raise CliError(f"{path}: no arm named {arm!r}; arms are {names}", EXIT_BAD_INPUT)
    engine = entry.setdefault("engine", {})
    old = engine.get("max_num_seqs", 16)
    engine["max_num_seqs"] = value
    try:
        fleet = parse_fleet(data, source=str(path))
        from corral.cluster.spec.autoscaling import check_against_arm

        a = fleet.arm(arm)
        check_against_arm(a.autoscaling, a.engine.max_num_seqs, a.replicas.min, a.replicas.max)
    except SpecError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except ValueError as exc:
        raise CliError(f"{path}: arms[{arm}].engine.max_num_seqs={value}: {exc}", EXIT_BAD_INPUT) from None
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return old


def run(args: argparse.Namespace) -> int:
    if args.fleet is None:
        raise CliError("give the fleet file to change (the embedded demo fleet is read-only)", EXIT_BAD_INPUT)
    path = Path(args.fleet)
    if not path.is_file():
        raise CliError(f"{path}: no such fleet file", EXIT_BAD_INPUT)
    old = set_max_num_seqs(path, args.arm, args.max_num_seqs)
    print(f"{path}: arm {args.arm!r} engine.max_num_seqs {old} -> {args.max_num_seqs}")
    if args.no_apply:
        return 0
    from corral.commands.up import apply_fleet  # lazily: `up` pulls in Ray

    apply_fleet(str(path))
    print("re-deployed: Serve rolls the arm's replicas one at a time")
    return 0
