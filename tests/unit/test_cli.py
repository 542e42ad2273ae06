"""The CLI's conventions: `cmd_<name>` handlers, the fleet file always as the positional FLEET,
exit codes from corral/commands/_common.py, and a `--help`/`validate` that imports neither Ray nor vLLM."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from corral.cli import build_parser, main
from corral.commands import _common

# ab.py keeps its `run` until the A/B command's own rework renames it.
EXEMPT_HANDLERS = {"corral.commands.ab.run"}


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*path, name))


LEAVES = list(_leaf_parsers(build_parser()))


def test_every_command_has_a_cmd_handler():
    assert len(LEAVES) > 20
    for path, parser in LEAVES:
        func = parser.get_default("func")
        qualified = f"{func.__module__}.{func.__name__}"
        assert func.__name__.startswith("cmd_") or qualified in EXEMPT_HANDLERS, (path, qualified)


def test_a_fleet_file_is_always_the_positional_fleet():
    with_fleet = set()
    for path, parser in LEAVES:
        options = [s for a in parser._actions for s in a.option_strings]
        assert "--fleet" not in options, path
        fleet = [a for a in parser._actions if a.dest == "fleet"]
        if fleet:
            (action,) = fleet
            assert not action.option_strings and action.metavar == "FLEET", path
            optional = action.nargs == "?"
            assert ("default" in action.help) == optional or "optional" in action.help, (path, action.help)
            with_fleet.add(" ".join(path))
    assert {"up", "validate", "keys add", "keys list", "tune", "plan capacity", "loadtest"} <= with_fleet


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # undo argparse's wrapping


def test_help_says_which_fleet_is_used(capsys):
    assert "FLEET fleet spec YAML (default: the embedded demo fleet)" in _help(capsys, ["validate"])
    for argv in (["keys", "add"], ["tune"]):
        out = _help(capsys, argv)
        assert "read-only" in out and "comments and formatting" in out and "not preserved" in out, argv


def test_bad_fleet_exits_2_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("arms: [{name: a, model: {demo: tiny-llama2-random}, replicas: {min: 3, max: 2}}]\n")
    assert main(["validate", str(bad), "--no-check-paths"]) == _common.EXIT_BAD_INPUT
    assert "arms[a].replicas" in capsys.readouterr().err
    assert main(["keys", "list", str(tmp_path / "missing.yaml")]) == _common.EXIT_BAD_INPUT


def test_help_and_validate_import_neither_ray_nor_vllm():
    code = ("import sys; from corral.cli import main; assert main(['validate']) == 0; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'torch')); "
            "assert not bad, bad[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_apply_fleet_refuses_an_invalid_fleet_before_touching_ray(tmp_path, capsys):
    from corral.cluster.spec import SpecError
    from corral.serving.fleet_ops import apply_fleet

    bad = tmp_path / "fleet.yaml"
    bad.write_text("arms: [{name: a, model: {demo: tiny-llama2-random}, replicas: {min: 3, max: 2}}]\n")
    with pytest.raises(SpecError, match=r"arms\[a\]\.replicas"):
        apply_fleet(bad, say=lambda m: pytest.fail(f"progress before validation: {m}"))
    assert main(["up", str(bad)]) == _common.EXIT_BAD_INPUT  # ray.init would raise: nothing was started
    assert "arms[a].replicas" in capsys.readouterr().err


def test_domain_errors_keep_a_local_errors_exit_code():
    """A fleet this machine or model cannot run (LocalError code 2, e.g. a TP size that does not
    divide the heads) exits 2 like any bad input; environment problems 3; anything else 1."""
    from corral.commands._common import CliError, domain_errors
    from corral.serving.local import LocalError

    for code, expected in ((2, 2), (3, 3), (1, 1), (7, 1)):
        with pytest.raises(CliError) as info, domain_errors():
            raise LocalError("x", code=code)
        assert info.value.code == expected
