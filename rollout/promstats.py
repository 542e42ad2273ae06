"""Per-arm totals and histograms from corral's own Prometheus series over a time window.

Used by sequential gates (counts since the step began) and by `corral ab report --prometheus`
(counts over `--since/--until`). Every query is `increase(...[window])` evaluated at the
window's end, summed over the route and arm labels (series names in `cluster/metric_names.py`).
Prometheus extrapolates `increase` to the window's edges, so counts may be fractional.
"""

from __future__ import annotations

import math

from corral.cluster import metric_names as mn
from corral.rollout.gates import format_window
from corral.rollout.sequential import ArmSample, bernoulli_sample, log_histogram_sample
from corral.serving.prometheus import PrometheusClient

HISTOGRAMS = {"latency": mn.LATENCY, "ttft": mn.TTFT, "itl": mn.ITL, "feedback": mn.FEEDBACK}


def selector(route: str, arm: str, extra: str = "") -> str:
    return f'{{route="{route}",arm="{arm}"{"," + extra if extra else ""}}}'


def total(client: PrometheusClient, name: str, route: str, arm: str, window_s: float, at: float | None = None,
          extra: str = "", shadow: bool = False) -> float:
    """sum(increase(name{route, arm}[window])) at `at` (0 when the series has no samples);
    `shadow`: the shadow series of `name` (cluster/metric_names.py SHADOW_OF)."""
    name = mn.SHADOW_OF[name] if shadow else name
    q = f"sum(increase({mn.exported(name)}{selector(route, arm, extra)}[{format_window(window_s)}]))"
    return client.query(q, at) or 0.0


def buckets(client: PrometheusClient, hist: str, route: str, arm: str, window_s: float,
            at: float | None = None, shadow: bool = False) -> list[tuple[float, float]]:
    """Cumulative bucket counts [(le, count), ...] of a histogram over the window, sorted by le."""
    name = mn.SHADOW_OF[HISTOGRAMS[hist]] if shadow else HISTOGRAMS[hist]
    q = (f"sum by (le) (increase({mn.exported(name)}_bucket{selector(route, arm)}"
         f"[{format_window(window_s)}]))")
    out = []
    for r in client.vector(q, at):
        le, v = float(r["metric"]["le"]), float(r["value"][1])
        if not math.isnan(v):
            out.append((le, v))
    return sorted(out)


def requests_and_errors(client: PrometheusClient, route: str, arm: str, window_s: float,
                        at: float | None = None, shadow: bool = False) -> tuple[float, float]:
    """Requests answered and those answered 5xx."""
    n = total(client, mn.REQUESTS, route, arm, window_s, at, shadow=shadow)
    errors = total(client, mn.REQUESTS, route, arm, window_s, at, extra=f'status=~"{mn.SERVER_ERROR_STATUS_RE}"',
                   shadow=shadow)
    return n, errors


def feedback_counts(client: PrometheusClient, route: str, arm: str, window_s: float,
                    at: float | None = None) -> tuple[float, float]:
    """(ratings, ratings above 0.5) sent to /v1/feedback; the ingress's buckets include le=0.5."""
    return feedback_pass(buckets(client, "feedback", route, arm, window_s, at))


def feedback_pass(bs: list[tuple[float, float]]) -> tuple[float, float]:
    """(ratings, ratings above 0.5) from the feedback histogram's cumulative buckets."""
    n = max((c for _, c in bs), default=0.0)
    at_most_half = next((c for le, c in bs if abs(le - 0.5) < 1e-9), None)
    return n, (n - at_most_half) if at_most_half is not None else 0.0


def sample(client: PrometheusClient, metric: str, route: str, arm: str, window_s: float,
           at: float | None = None, shadow: bool = False) -> ArmSample | None:
    """The per-request statistics a sequential gate on `metric` compares (see rollout/sequential.py);
    `shadow`: from the arm's shadow copies (not for quality_pass_rate: nobody rates those)."""
    if metric == "error_rate":
        n, errors = requests_and_errors(client, route, arm, window_s, at, shadow)
        return bernoulli_sample(errors, n)
    if metric == "quality_pass_rate":
        if shadow:
            raise ValueError("quality_pass_rate has no shadow series: nobody rates a shadow answer")
        n, passed = feedback_counts(client, route, arm, window_s, at)
        return bernoulli_sample(passed, n)
    if metric in ("latency", "ttft", "itl"):
        return log_histogram_sample(buckets(client, metric, route, arm, window_s, at, shadow))
    raise ValueError(f"unknown sequential metric {metric!r}")
