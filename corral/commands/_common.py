"""What every CLI command shares: exit codes, errors, the FLEET argument, fleet loading.

Conventions of every command module: `register(subparsers)` builds its parser; handlers are
named `cmd_<name>` and only parse, call the packages and print; a fleet file is always the
positional FLEET (last positional; see `add_fleet_arg`); exit codes come from here.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Exit codes: 1 runtime failure, 2 bad input (spec, flags), 3 environment problem
# (port in use, Ray running with other settings, missing model).
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_ENVIRONMENT = 1, 2, 3
# Interrupted by Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130

FLEET_HELP = "fleet spec YAML (default: the embedded demo fleet)"
FLEET_EDIT_HELP = ("fleet spec YAML to change (required: the embedded demo is read-only); rewritten atomically "
                   "after validation, comments and formatting are not preserved")


class CliError(Exception):
    """An error the CLI reports as one message and an exit code (no traceback)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def add_fleet_arg(parser: argparse.ArgumentParser, required: bool = False, help: str | None = None) -> None:
    """The one way a command takes a fleet file: a positional FLEET. Optional (default: the
    embedded demo fleet) for commands that read a fleet; required for commands that change one."""
    if required:
        parser.add_argument("fleet", metavar="FLEET", help=help or FLEET_EDIT_HELP)
    else:
        parser.add_argument("fleet", metavar="FLEET", nargs="?", default=None, help=help or FLEET_HELP)


def load_fleet_or_exit(path: str | None, check_paths: bool = True) -> Any:
    """The fleet at `path` (None = the demo fleet), or CliError (exit 2) naming the bad field."""
    from corral.cluster.spec import load_fleet

    with domain_errors():
        return load_fleet(path, check_paths=check_paths)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn the packages' errors into CliError with these exit codes: a bad fleet spec (SpecError)
    is bad input (2); a local problem (serving.local.LocalError) keeps its kind (2 a fleet this
    machine or model cannot run, e.g. a TP size that does not divide the heads; 3 environment; else 1)."""
    from corral.cluster.spec import SpecError

    try:
        yield
    except SpecError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    except Exception as exc:
        from corral.serving.local import LocalError

        if isinstance(exc, LocalError):
            known = (EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_ENVIRONMENT)
            raise CliError(str(exc), exc.code if exc.code in known else EXIT_FAILURE) from None
        raise
