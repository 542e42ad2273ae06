"""Metric provider for rollout analyses: the `MetricSource` protocol and its Prometheus implementation.

`PrometheusMetricSource` renders each gate's PromQL for baseline and candidate and asks
Prometheus (through `corral.serving.prometheus.PrometheusClient`). When Prometheus cannot answer it
raises `MetricSourceError`, which the state machine turns into phase Error, then Paused — never a
promotion.
"""

from __future__ import annotations

from typing import Protocol

from corral.cluster import metric_names as mn
from corral.cluster.spec.rollout import RolloutSpec
from corral.rollout import promstats
from corral.rollout.gates import MetricReadings, render, requests_query
from corral.serving.prometheus import PrometheusClient, PrometheusError


class MetricSourceError(RuntimeError):
    """The metric source could not answer (unreachable, HTTP error, query error)."""


class MetricSource(Protocol):
    """Where analyses get their numbers (Prometheus in production, a fake in tests)."""

    def collect(self, spec: RolloutSpec, window_s: float, elapsed_s: float, shadow: bool = False) -> MetricReadings:
        """Measure every gate for baseline and candidate; raise MetricSourceError if unreachable.
        `shadow=True` (a shadow stage): the candidate's shadow series instead of its user series;
        the controller passes it only then, so a source for rollouts without one may omit it."""
        ...


class PrometheusMetricSource:
    """Gates and request counts from Prometheus."""

    def __init__(self, client: PrometheusClient):
        self.client = client

    def collect(self, spec: RolloutSpec, window_s: float, elapsed_s: float, shadow: bool = False) -> MetricReadings:
        """`shadow`: the rollout's shadow stage: the candidate's numbers come from its shadow
        series (`ray_corral_shadow_*`), the baseline's from its user series; gates on user
        feedback are not measured (nobody rates a shadow answer)."""
        try:
            return self._collect(spec, window_s, elapsed_s, shadow)
        except PrometheusError as exc:
            raise MetricSourceError(str(exc)) from exc

    def _collect(self, spec: RolloutSpec, window_s: float, elapsed_s: float, shadow: bool = False) -> MetricReadings:
        arms = (spec.baseline, spec.candidate)
        gates = [g for g in spec.gates if not (shadow and g.reads_user_feedback)]

        def copies(arm: str) -> bool:
            return shadow and arm == spec.candidate

        values = {
            g.name: {arm: self.client.query(render(g.query, spec.route, arm, window_s, copies(arm))) for arm in arms}
            for g in gates if g.test == "threshold"
        }
        # Sequential gates see every request of the step so far (their test is valid at any count).
        samples = {}
        for g in gates:
            if g.test == "sequential" and g.metric is not None:
                got = {arm: promstats.sample(self.client, g.metric, spec.route, arm, elapsed_s, shadow=copies(arm))
                       for arm in arms}
                samples[g.name] = {arm: (v.to_list() if v is not None else None) for arm, v in got.items()}
        requests = {arm: self.client.query(requests_query(spec.route, arm, elapsed_s, copies(arm))) or 0.0
                    for arm in arms}
        golden = None
        if shadow and spec.shadow.golden:  # the candidate's scored shadow answers to golden prompts
            passed, failed = (promstats.total(self.client, mn.SHADOW_GOLDEN, spec.route, spec.candidate, elapsed_s,
                                              extra=f'result="{result}"') for result in ("pass", "fail"))
            golden = [passed, passed + failed]
        return MetricReadings(values=values, requests=requests, samples=samples, shadow_golden=golden)
