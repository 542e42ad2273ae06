"""The Grafana dashboards shipped in helm/corral/dashboards, and their PromQL.

`panel_queries()` lists (dashboard, panel title, expr) for every query of every panel, so a
check can run each one against a Prometheus scraping a live fleet. `resolve()` replaces the
Grafana variables with values plain Prometheus accepts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "helm" / "corral" / "dashboards"

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


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """Dashboard JSON by file stem."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboards in {directory}")
    return {p.stem: json.loads(p.read_text()) for p in files}


def _panels(items: list[dict[str, Any]]):
    for p in items:
        yield p
        yield from _panels(p.get("panels", []))  # rows nest their panels


def panel_queries(directory: Path = DASHBOARD_DIR) -> list[PanelQuery]:
    """(dashboard, panel title, expr) for every Prometheus query of every panel."""
    out = []
    for name, dash in load_dashboards(directory).items():
        for p in _panels(dash.get("panels", [])):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(PanelQuery(name, p["title"], t["expr"]))
    return out
