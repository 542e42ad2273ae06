"""A/B report: per-arm statistics with confidence intervals and significance tests.

Input is per-request records (JSONL written by load tests or exported from logs):
    {"arm": "llama3", "status": 200, "latency_s": 1.2, "ttft_s": 0.3, "output_tokens": 57,
     "feedback": 0.8, "quality": 1.0}
(`ttft_s`, `feedback`, `quality` optional). For every metric the report gives each arm's
estimate with a 95% confidence interval and compares the candidate with the baseline:
Welch's t-test for means, the two-proportion z-test for rates. Latency quantiles carry a
distribution-free CI from order statistics. Cost per 1M output tokens uses the GPU price
from the fleet spec: price/hour x GPUs of the arm x hours observed / output tokens.

Statistics are implemented here (no scipy dependency): the Student t CDF through the
regularized incomplete beta function (continued fraction, Numerical Recipes 6.4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

Z95 = 1.959963984540054


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(df):
        return 2 * (1 - normal_cdf(abs(t)))
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile_975(df: float) -> float:
    """Two-sided 95% critical value of Student's t (bisection on the CDF)."""
    if df > 1e6:
        return Z95
    lo, hi = 0.0, 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if t_sf_two_sided(mid, df) > 0.05:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class Comparison:
    test: str
    statistic: float | None
    p_value: float | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 0.05


def mean_ci(xs: list[float]) -> Estimate:
    n = len(xs)
    if n == 0:
        return Estimate(None, None, None, 0)
    m = sum(xs) / n
    if n == 1:
        return Estimate(m, None, None, 1)
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(var / n)
    return Estimate(m, m - half, m + half, n)


def proportion_ci(successes: int, n: int) -> Estimate:
    """Wilson score interval."""
    if n == 0:
        return Estimate(None, None, None, 0)
    p, z = successes / n, Z95
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def quantile_ci(xs: list[float], q: float) -> Estimate:
    """Sample quantile with a distribution-free 95% CI from order statistics (normal approx. of the binomial)."""
    n = len(xs)
    if n == 0:
        return Estimate(None, None, None, 0)
    s = sorted(xs)
    value = s[min(n - 1, max(0, math.ceil(q * n) - 1))]
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo_i, hi_i = math.floor(n * q - half), math.ceil(n * q + half)
    low = s[lo_i - 1] if lo_i >= 1 else None
    high = s[hi_i - 1] if hi_i <= n else None
    return Estimate(value, low, high, n)


def welch_t_test(a: list[float], b: list[float]) -> Comparison:
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return Comparison("welch-t", None, None)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        return Comparison("welch-t", None, 1.0 if ma == mb else 0.0)
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1)) if va and vb else min(na, nb) - 1
    return Comparison("welch-t", t, t_sf_two_sided(t, df))


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> Comparison:
    if n1 == 0 or n2 == 0:
        return Comparison("two-proportion-z", None, None)
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return Comparison("two-proportion-z", None, 1.0)
    z = (x1 / n1 - x2 / n2) / se
    return Comparison("two-proportion-z", z, 2 * (1 - normal_cdf(abs(z))))


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
            per_m = (lambda t: spend / (v.requests * t) * 1e6 if t and t > 0 else None)
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
        out.append([r.metric, fmt(r.estimates.get(baseline)), fmt(r.estimates.get(candidate)), sig])
    return out
