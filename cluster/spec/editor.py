"""The one way corral changes a fleet file: read, change, validate, replace atomically.

`edit_fleet_file(path, change)` reads the YAML, lets `change` modify the document, validates the
result with the fleet spec (and an optional extra check), and only then writes it to a temporary
file beside the original and `os.replace`s it in: a reader sees the old file or the new one, never
half of one, and an invalid result leaves the file untouched.

**Comments and formatting are not preserved**: the document is read and written with PyYAML,
which drops comments, blank lines and quoting style, and keeps key order. (`corral keys add`,
`corral tune` and `corral plan capacity --write` say so in their help.)
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from corral.cluster.spec.fleet import FleetSpec
from corral.cluster.spec.loader import SpecError, parse_fleet

T = TypeVar("T")


def read_fleet_document(path: str | Path) -> dict[str, Any]:
    """The fleet file's YAML as a mapping; SpecError if it cannot be read or is not a mapping."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SpecError(str(p), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError(str(p), [("(file)", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpecError(str(p), [("(top level)", f"expected a mapping, got {type(data).__name__}")])
    return data


def apply_change(data: dict[str, Any], change: Callable[[dict[str, Any]], T], source: str,
                 check: Callable[[FleetSpec], None] | None = None,
                 where: str = "(change)") -> tuple[dict[str, Any], FleetSpec, T]:
    """Apply `change` to a copy of `data` and validate the result. `change` and `check` (rules
    beyond the spec, given the parsed fleet) may raise ValueError; it becomes a SpecError at
    field `where`. Returns the new document, its FleetSpec and what `change` returned."""
    doc = copy.deepcopy(data)
    try:
        result = change(doc)
        fleet = parse_fleet(doc, source=source)
        if check is not None:
            check(fleet)
    except SpecError:
        raise
    except ValueError as exc:
        raise SpecError(source, [(where, str(exc))]) from None
    return doc, fleet, result


def write_fleet_document(path: str | Path, doc: dict[str, Any]) -> None:
    """Write `doc` as YAML to `path` atomically (temporary file in the same folder + os.replace)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def edit_fleet_file(path: str | Path, change: Callable[[dict[str, Any]], T],
                    check: Callable[[FleetSpec], None] | None = None, where: str = "(change)") -> T:
    """Read the fleet file at `path`, apply `change` (it edits the document in place and may
    return a value), validate, and replace the file atomically. Returns what `change` returned.
    Raises SpecError (file untouched) if the file is unreadable, invalid before the change,
    or invalid after it."""
    p = Path(path)
    data = read_fleet_document(p)
    parse_fleet(data, source=str(p))  # the file is valid before we touch it
    doc, _, result = apply_change(data, change, source=str(p), check=check, where=where)
    write_fleet_document(p, doc)
    return result


def set_max_num_seqs(path: str | Path, arm: str, value: int) -> int:
    """Set `engine.max_num_seqs` of `arm` in the fleet file at `path` (`corral tune`), checked
    with the whole spec and the arm's autoscaling rules. Returns the previous value."""
    from corral.cluster.spec.autoscaling import check_against_arm

    def change(doc: dict[str, Any]) -> int:
        arms = doc.get("arms")
        entry = next((a for a in arms or [] if isinstance(a, dict) and a.get("name") == arm), None)
        if entry is None:
            names = [a.get("name") for a in arms or [] if isinstance(a, dict)]
            raise ValueError(f"no arm named {arm!r}; arms are {names}")
        engine = entry.setdefault("engine", {})
        old = int(engine.get("max_num_seqs", 16))
        engine["max_num_seqs"] = value
        return old

    def check(fleet: FleetSpec) -> None:
        a = fleet.arm(arm)
        check_against_arm(a.autoscaling, a.engine.max_num_seqs, a.replicas.min, a.replicas.max)

    return edit_fleet_file(path, change, check=check, where=f"arms[{arm}].engine.max_num_seqs={value}")


def merge_overlay(fleet_doc: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A fleet document with an overlay applied: arms merged by name, nested mappings merged
    one level deep (`corral plan capacity` writes such overlays). Raises ValueError for an
    overlay arm the fleet does not have."""
    out = copy.deepcopy(fleet_doc)
    by_name = {a.get("name"): a for a in out.get("arms", []) if isinstance(a, dict)}
    for patch in overlay.get("arms", []):
        target = by_name.get(patch["name"])
        if target is None:
            raise ValueError(f"overlay arm {patch['name']!r} is not in the fleet (arms: {sorted(map(str, by_name))})")
        for key, value in patch.items():
            if isinstance(value, dict):
                target[key] = {**(target.get(key) or {}), **value}
            else:
                target[key] = value
    return out
