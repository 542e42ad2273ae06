"""A/B report: per-arm statistics with confidence intervals and significance tests.

Input is per-request records (JSONL written by load tests or exported from logs):
    {"arm": "llama3", "status": 200, "latency_s": 1.2, "ttft_s": 0.3, "output_tokens": 57,
     "feedback": 0.8, "quality": 1.0}
(`ttft_s`, `feedback`, `quality` optional). For every metric the report gives each arm's
estimate with a 95% confidence interval and compares the candidate with the baseline:
Welch's t-test for means, the two-proportion z-test for rates. Latency quantiles carry a
distribution-free CI from order statistics. Cost per 1M output tokens uses the GPU price
from the fleet spec: price/hour x GPUs of the arm x hours observed / output tokens.

The statistics themselves live in `corral.common.stats` (scipy's distributions). The same
report from live traffic in Prometheus is `corral.rollout.ab_prometheus`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from corral.common.stats import (
    Comparison,
    Estimate,
    mean_ci,
    proportion_ci,
    quantile_ci,
    two_proportion_z_test,
    welch_t_test,
)


@dataclass
class ArmRecords:
    requests: int = 0
    errors: int = 0
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    output_tokens: list[float] = field(default_factory=list)
    feedback: list[float] = field(default_factory=list)
    quality: list[float] = field(default_factory=list)


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def group(records: list[dict]) -> dict[str, ArmRecords]:
    arms: dict[str, ArmRecords] = {}
    for r in records:
        a = arms.setdefault(str(r["arm"]), ArmRecords())
        a.requests += 1
        ok = 200 <= int(r.get("status", 200)) < 400
        if int(r.get("status", 200)) >= 500:
            a.errors += 1
        if ok:
            if r.get("latency_s") is not None:
                a.latency.append(float(r["latency_s"]))
            if r.get("ttft_s") is not None:
                a.ttft.append(float(r["ttft_s"]))
            a.output_tokens.append(float(r.get("output_tokens") or 0))
        for key in ("feedback", "quality"):
            if r.get(key) is not None:
                getattr(a, key).append(float(r[key]))
    return arms


@dataclass(frozen=True)
class Row:
    metric: str
    estimates: dict[str, Estimate]
    comparison: Comparison | None
    note: str = ""
    """How the figure was obtained or its known error (e.g. the histogram bucket of a quantile)."""


def ab_report(arms: dict[str, ArmRecords], baseline: str, candidate: str, duration_s: float,
              gpu_hourly_usd: float | None, gpus: dict[str, int]) -> list[Row]:
    """Rows of (metric, per-arm estimate with CI, candidate-vs-baseline test)."""
    for name in (baseline, candidate):
        arms.setdefault(name, ArmRecords())
    b, c = arms[baseline], arms[candidate]
    rows = [
        Row("requests", {k: Estimate(float(v.requests), None, None, v.requests) for k, v in arms.items()}, None),
        Row("error_rate", {k: proportion_ci(v.errors, v.requests) for k, v in arms.items()},
            two_proportion_z_test(c.errors, c.requests, b.errors, b.requests)),
        Row("latency_mean_s", {k: mean_ci(v.latency) for k, v in arms.items()}, welch_t_test(c.latency, b.latency)),
        Row("latency_p50_s", {k: quantile_ci(v.latency, 0.5) for k, v in arms.items()}, None),
        Row("latency_p95_s", {k: quantile_ci(v.latency, 0.95) for k, v in arms.items()}, None),
        Row("ttft_mean_s", {k: mean_ci(v.ttft) for k, v in arms.items()}, welch_t_test(c.ttft, b.ttft)),
        Row("ttft_p95_s", {k: quantile_ci(v.ttft, 0.95) for k, v in arms.items()}, None),
        Row("quality_score", {k: mean_ci(v.quality) for k, v in arms.items()}, welch_t_test(c.quality, b.quality)),
        Row("satisfaction", {k: mean_ci(v.feedback) for k, v in arms.items()}, welch_t_test(c.feedback, b.feedback)),
        Row("output_tokens_per_request", {k: mean_ci(v.output_tokens) for k, v in arms.items()},
            welch_t_test(c.output_tokens, b.output_tokens)),
    ]
    if gpu_hourly_usd is not None and duration_s > 0:
        cost = {}
        for k, v in arms.items():
            spend = gpu_hourly_usd * gpus.get(k, 1) * duration_s / 3600
            m = mean_ci(v.output_tokens)
            # Cost is spend / (n x mean tokens); the mean's CI bounds give the cost's (inverted).
            per_m = (lambda t, spend=spend, n=v.requests: spend / (n * t) * 1e6 if t and t > 0 else None)
            cost[k] = Estimate(per_m(m.value), per_m(m.high), per_m(m.low), m.n)
        rows.append(Row("cost_per_1m_output_tokens_usd", cost, None))
    return rows


def render_rows(rows: list[Row], baseline: str, candidate: str) -> list[list[str]]:
    def fmt(e: Estimate | None) -> str:
        if e is None or e.value is None:
            return "-"
        ci = f" [{e.low:.4g}, {e.high:.4g}]" if e.low is not None and e.high is not None else ""
        return f"{e.value:.4g}{ci}"

    out = []
    for r in rows:
        cmp_ = r.comparison
        sig = "-" if cmp_ is None or cmp_.p_value is None else \
            f"p={cmp_.p_value:.3g} ({cmp_.test}){' *' if cmp_.significant else ''}"
        out.append([r.metric, fmt(r.estimates.get(baseline)), fmt(r.estimates.get(candidate)), sig, r.note])
    return out
