"""Metric gates: PromQL rendering and pure evaluation of readings.

Pure: no I/O. `evaluate_gate` is used by the rollout state machine; the readings come from a
metric provider (`corral.rollout.metrics`).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from corral.cluster import metric_names as mn
from corral.cluster.spec.rollout import METRIC_PLACEHOLDERS, SHADOW_METRIC_PLACEHOLDERS, MetricGate


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    candidate: float | None
    baseline: float | None
    value: float | None
    """What was compared with the bounds: the ratio (compare=ratio) or the candidate's value."""
    message: str
    low: float | None = None
    """Sequential gates: lower end of the confidence sequence for `value` (None for threshold gates)."""
    high: float | None = None
    """Sequential gates: upper end of the confidence sequence for `value`."""
    test: str = "threshold"
    """`threshold` or `sequential` (how the verdict was reached)."""
    alpha: float | None = None
    """Sequential gates: the error rate the verdict carries."""
    margin: float | None = None
    """Sequential gates: how much worse the candidate may be (ratio or proportion points)."""
    advisory: bool = False
    """A check that can fail a step but whose missing or inconclusive evidence never holds it
    (the shadow stage's golden-subset check: golden prompts come only when users send them)."""

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "verdict": self.verdict.value, "candidate": self.candidate,
                "baseline": self.baseline, "value": self.value, "message": self.message,
                "low": self.low, "high": self.high, "test": self.test, "alpha": self.alpha, "margin": self.margin,
                "advisory": self.advisory}


@dataclass(frozen=True)
class MetricReadings:
    """One analysis' measurements: gate -> arm -> value (None = no data), and the
    requests each arm served since the step's weights took effect."""

    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    requests: dict[str, float] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)
    """Sequential gates: gate -> arm -> [n, mean, variance] of the per-request values over the
    step (see `corral.rollout.sequential.ArmSample`); None = no data."""
    shadow_golden: list[float] | None = None
    """Shadow stage: [passed, scored] of the candidate's shadow answers to golden prompts so far
    (None: not measured)."""


def format_window(seconds: float) -> str:
    return f"{max(1, int(round(seconds)))}s"


def render(template: str, route: str, arm: str, window_s: float, shadow: bool = False) -> str:
    """A gate template with route, arm, window and metric names filled in; `shadow`: the arm's
    shadow series (a rollout's shadow stage) instead of its user series."""
    metrics = SHADOW_METRIC_PLACEHOLDERS if shadow else METRIC_PLACEHOLDERS
    mapping = dict(metrics, route=route, arm=arm, window=format_window(window_s))
    return string.Template(template).substitute(mapping)


def requests_query(route: str, arm: str, elapsed_s: float, shadow: bool = False) -> str:
    """Requests an arm served on a route in the last `elapsed_s` (the step so far); `shadow`:
    shadow copies it answered instead."""
    name = mn.exported(mn.SHADOW_REQUESTS if shadow else mn.REQUESTS)
    return f'sum(increase({name}{{route="{route}",arm="{arm}"}}[{format_window(elapsed_s)}])) or vector(0)'


def _clean(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def evaluate_gate(gate: MetricGate, candidate: float | None, baseline: float | None) -> GateResult:
    """Compare one gate's readings with its bounds. Missing data is inconclusive, never a pass."""
    candidate, baseline = _clean(candidate), _clean(baseline)
    if candidate is None or (gate.compare == "ratio" and baseline is None):
        missing = "candidate" if candidate is None else "baseline"
        return GateResult(gate.name, Verdict.INCONCLUSIVE, candidate, baseline, None, f"no data for the {missing}")
    if gate.compare == "ratio" and baseline is not None:  # (a ratio without a baseline returned above)
        value = max(candidate, gate.floor) / max(baseline, gate.floor)
        what = f"candidate/baseline = {max(candidate, gate.floor):.4g}/{max(baseline, gate.floor):.4g} = {value:.3g}"
    else:
        value = max(candidate, gate.floor)
        what = f"candidate = {value:.4g}"
    if gate.max is not None and value > gate.max:
        return GateResult(gate.name, Verdict.FAIL, candidate, baseline, value, f"{what} > max {gate.max}")
    if gate.min is not None and value < gate.min:
        return GateResult(gate.name, Verdict.FAIL, candidate, baseline, value, f"{what} < min {gate.min}")
    return GateResult(gate.name, Verdict.PASS, candidate, baseline, value, what)
