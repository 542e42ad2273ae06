"""The `corral` command line. Each command group lives in corral/commands/<group>.py and
exposes `register(subparsers)`; its handlers (`cmd_<name>`) parse, call the packages and print.
Heavy libraries (Ray, vLLM, torch) are imported inside the handlers, so `corral --help` and
`corral validate` start fast."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import corral
import corral.commands
from corral.commands._common import EXIT_INTERRUPTED, CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Orchestrate Llama fleets on Ray Serve LLM + vLLM: serve, split, roll out, scale, plan.",
        epilog="FLEET: a fleet spec YAML, always the last positional argument. Commands that read a fleet default "
               "to the embedded demo fleet; commands that change one (keys add, tune) require it. "
               "Exit codes: 1 failure, 2 bad input, 3 environment.",
    )
    parser.add_argument("--version", action="version", version=f"corral {corral.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in sorted(pkgutil.iter_modules(corral.commands.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"corral.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("corral: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into e.g. `head`: the reader left; that is not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
