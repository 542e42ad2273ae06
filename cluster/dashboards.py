"""The Grafana dashboards shipped in helm/corral/dashboards, and their PromQL.

The JSON files live in the chart (helm reads only files inside a chart: `.Files.Glob` in
templates/dashboards-configmap.yaml) and are installed with corral as the data-only package
`corral.cluster.grafana` (pyproject `package-dir`), so the loader finds them in a wheel install
as in a checkout.

`panel_queries()` lists (dashboard, panel title, expr) for every query of every panel, so a
check can run each one against a Prometheus scraping a live fleet. `resolve()` replaces the
Grafana variables with values plain Prometheus accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

DASHBOARD_PACKAGE = "corral.cluster.grafana"


def dashboard_dir() -> Traversable:
    """The installed dashboards (helm/corral/dashboards in a checkout)."""
    return files(DASHBOARD_PACKAGE)

# Grafana variables -> what Prometheus' HTTP API understands (every route/arm, a 1m window).
DEFAULT_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$route": ".*",
    "$arm": ".*",
}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    """Dashboard file stem (fleet, arm, rollout)."""
    panel: str
    """Panel title."""
    expr: str
    """PromQL as stored, with Grafana variables."""

    def resolved(self, variables: dict[str, str] | None = None) -> str:
        return resolve(self.expr, variables)


def resolve(expr: str, variables: dict[str, str] | None = None) -> str:
    """Substitute Grafana variables (longest names first, so $__range does not eat $__rate_interval)."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    leftover = re.findall(r"\$\w+", expr)
    if leftover:
        raise ValueError(f"unresolved Grafana variable(s) {sorted(set(leftover))} in {expr!r}")
    return expr


def load_dashboards(directory: Path | Traversable | None = None) -> dict[str, dict[str, Any]]:
    """Dashboard JSON by file stem (default: the installed dashboards)."""
    where = dashboard_dir() if directory is None else directory
    found = sorted((p for p in where.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)
    if not found:
        raise FileNotFoundError(f"no dashboards in {where}")
    return {p.name.removesuffix(".json"): json.loads(p.read_text()) for p in found}


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from _panels(p.get("panels", []))  # rows nest their panels


def panel_queries(directory: Path | Traversable | None = None) -> list[PanelQuery]:
    """(dashboard, panel title, expr) for every Prometheus query of every panel."""
    out = []
    for name, dash in load_dashboards(directory).items():
        for p in _panels(dash.get("panels", [])):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(PanelQuery(name, p["title"], t["expr"]))
    return out
