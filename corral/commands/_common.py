"""Shared CLI helpers: errors with exit codes, fleet loading."""

from __future__ import annotations

import argparse

# Exit codes: 1 runtime failure, 2 bad input (spec, flags), 3 environment problem
# (port in use, Ray running with other settings, missing model).
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_ENVIRONMENT = 1, 2, 3


class CliError(Exception):
    """An error the CLI reports as one message and an exit code (no traceback)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def add_fleet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "fleet", nargs="?", default=None,
        help="fleet spec YAML (default: the embedded demo fleet)",
    )


def load_fleet_or_exit(path: str | None, check_paths: bool = True):
    from corral.cluster.spec import SpecError, load_fleet

    try:
        return load_fleet(path, check_paths=check_paths)
    except SpecError as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
