"""Reading a fleet file into a FleetSpec, with errors that name the offending field."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.cluster.spec.fleet import FleetSpec


class SpecError(ValueError):
    """A fleet file is unreadable or invalid. `problems` holds (field path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid fleet spec"] + [f"  {loc}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


def default_fleet_path() -> Path:
    """The embedded demo fleet that `corral up` runs when no file is given."""
    return Path(__file__).resolve().parent.parent / "fleets" / "demo.yaml"


def _loc(err: Mapping[str, Any], data: Any) -> str:
    """Render a pydantic error location as a dotted path, naming list items by their `name`."""
    parts: list[str] = []
    node = data
    for item in err["loc"]:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) and isinstance(node[item], dict) else None
            parts[-1:] = [f"{parts[-1]}[{name or item}]"] if parts else [f"[{item}]"]
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            # Model validators report the model itself; skip their synthetic loc entries.
            if item.startswith("function-") or item in {"tagged-union"}:
                continue
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def parse_fleet(data: Any, source: str = "<fleet>", check_paths: bool = False) -> FleetSpec:
    """Validate an already-parsed document. Raises SpecError naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError(source, [("(top level)", f"expected a mapping, got {type(data).__name__}")])
    try:
        return FleetSpec.model_validate(data, context={"check_paths": check_paths})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not part of the fleet spec)"
            problems.append((_loc(err, data), msg))
        raise SpecError(source, problems) from None


def load_fleet(path: str | Path | None = None, check_paths: bool = False) -> FleetSpec:
    """Read and validate a fleet YAML file (the embedded demo fleet when path is None)."""
    p = Path(path) if path is not None else default_fleet_path()
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(str(p), [("(file)", exc.strerror or str(exc))]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(p), [("(yaml)", str(exc).replace("\n", " "))]) from None
    return parse_fleet(data, source=str(p), check_paths=check_paths)
