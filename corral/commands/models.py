"""`corral models prepare|list`: build and check the demo models."""

from __future__ import annotations

import argparse

from corral.commands._common import EXIT_BAD_INPUT, CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="build and verify the demo models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = msub.add_parser("prepare", help="build demo models into the cache (idempotent, checksummed)")
    prep.add_argument("names", nargs="*", help="demo models to build (default: all)")
    prep.add_argument("--force", action="store_true", help="rebuild even if a verified copy exists")
    prep.set_defaults(func=cmd_prepare)
    ls = msub.add_parser("list", help="show demo models and whether they are prepared")
    ls.set_defaults(func=cmd_list)


def cmd_prepare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from corral.cluster import models

    names = args.names or list(models.DEMO_MODELS)
    unknown = [n for n in names if n not in models.DEMO_MODELS]
    if unknown:
        raise CliError(f"unknown demo model(s) {unknown}; known: {sorted(models.DEMO_MODELS)}", EXIT_BAD_INPUT)
    console = Console(stderr=True)
    for name in names:
        with console.status(f"[bold]{name}[/]: starting") as status:
            def say(msg: str, name: str = name) -> None:
                status.update(f"[bold]{name}[/]: {msg}")
                console.log(f"{name}: {msg}")
            try:
                path = models.prepare(name, say=say, force=args.force)
            except models.ModelError as exc:
                raise CliError(str(exc)) from None
        print(f"{name}\t{path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from corral.cluster import models

    for name, m in models.DEMO_MODELS.items():
        path = models.demo_model_dir(name)
        try:
            models.verify(path)
            state = "ready"
        except models.ModelError:
            state = "not prepared"
        print(f"{name}\t{state}\t{path}\t{m.description}")
    return 0
