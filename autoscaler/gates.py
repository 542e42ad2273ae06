"""Metric gates: PromQL rendering, pure evaluation of readings, and the Prometheus client.

`evaluate_gate` is pure (used by the rollout state machine). `PrometheusClient` and
`PrometheusMetricSource` are the edge: they talk to Prometheus' HTTP API
(`GET /api/v1/query`) and raise `MetricSourceError` when it cannot answer, which the
state machine turns into phase Error, then Paused — never a promotion.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from corral.cluster.spec.rollout import METRIC_PLACEHOLDERS, MetricGate, RolloutSpec
from corral.cluster import metric_names as mn


class MetricSourceError(RuntimeError):
    """The metric source could not answer (unreachable, HTTP error, query error)."""


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

    def to_dict(self) -> dict:
        return {"gate": self.gate, "verdict": self.verdict.value, "candidate": self.candidate,
                "baseline": self.baseline, "value": self.value, "message": self.message}


@dataclass(frozen=True)
class MetricReadings:
    """One analysis' measurements: gate -> arm -> value (None = no data), and the
    requests each arm served since the step's weights took effect."""

    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    requests: dict[str, float] = field(default_factory=dict)


def format_window(seconds: float) -> str:
    return f"{max(1, int(round(seconds)))}s"


def render(template: str, route: str, arm: str, window_s: float) -> str:
    """A gate template with route, arm, window and metric names filled in."""
    mapping = dict(METRIC_PLACEHOLDERS, route=route, arm=arm, window=format_window(window_s))
    return string.Template(template).substitute(mapping)


def requests_query(route: str, arm: str, elapsed_s: float) -> str:
    """Requests an arm served on a route in the last `elapsed_s` (the step so far)."""
    name = mn.exported(mn.REQUESTS)
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
    if gate.compare == "ratio":
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


class MetricSource(Protocol):
    """Where analyses get their numbers (Prometheus in production, a fake in tests)."""

    def collect(self, spec: RolloutSpec, window_s: float, elapsed_s: float) -> MetricReadings:
        """Measure every gate for baseline and candidate; raise MetricSourceError if unreachable."""
        ...


class PrometheusClient:
    """Minimal client for Prometheus' instant-query HTTP API."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, session=None):
        import requests

        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = session or requests.Session()

    def query(self, promql: str) -> float | None:
        """The value of a query that yields at most one sample; None if it yields none or NaN."""
        import requests

        try:
            resp = self._session.get(f"{self.base_url}/api/v1/query", params={"query": promql}, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise MetricSourceError(f"Prometheus at {self.base_url} unreachable: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            raise MetricSourceError(f"Prometheus answered HTTP {resp.status_code} with a non-JSON body") from None
        if resp.status_code != 200 or body.get("status") != "success":
            raise MetricSourceError(
                f"Prometheus query failed (HTTP {resp.status_code}, {body.get('errorType')}: {body.get('error')}): {promql}"
            )
        data = body.get("data", {})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            return _clean(float(result[1]))
        if kind != "vector":
            raise MetricSourceError(f"query returned a {kind}, expected a vector: {promql}")
        if not result:
            return None
        if len(result) > 1:
            labels = [r.get("metric") for r in result]
            raise MetricSourceError(f"query returned {len(result)} series {labels}, expected one: {promql}")
        return _clean(float(result[0]["value"][1]))


class PrometheusMetricSource:
    """Gates and request counts from Prometheus."""

    def __init__(self, client: PrometheusClient):
        self.client = client

    def collect(self, spec: RolloutSpec, window_s: float, elapsed_s: float) -> MetricReadings:
        arms = (spec.baseline, spec.candidate)
        values = {
            g.name: {arm: self.client.query(render(g.query, spec.route, arm, window_s)) for arm in arms}
            for g in spec.gates
        }
        requests = {arm: self.client.query(requests_query(spec.route, arm, elapsed_s)) or 0.0 for arm in arms}
        return MetricReadings(values=values, requests=requests)
