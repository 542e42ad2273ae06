"""The statistics corral uses, in one place: sample quantiles, confidence intervals, tests.

Quantile definition (one everywhere: the autoscaler's replica signals, the simulator, load-test
reports, SLO verdicts, A/B reports): **linear interpolation between order statistics**, Hyndman &
Fan type 7 — numpy's and Prometheus' `quantile_over_time` default. It is continuous in the data,
so a p95 over a small window does not jump by a whole sample when one request is added, and it
agrees with what operators compute from exported samples with numpy or pandas.

Distributions come from `scipy.stats` (Student t, normal); scipy is imported on first use so the
serving path, which only needs `quantile`, does not load it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
"""Two-sided confidence level of every interval and test here."""


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) by linear interpolation (type 7); None for an empty sample."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q={q} is outside 0..1")
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile(values: Sequence[float], p: float) -> float | None:
    """`quantile` with p in 0..100."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile p={p} is outside 0..100")
    return quantile(values, p / 100.0)


def t_critical(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided critical value of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def z_critical(confidence: float = CONFIDENCE) -> float:
    """Two-sided critical value of the standard normal."""
    from scipy import stats

    return float(stats.norm.ppf(0.5 + confidence / 2))


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (None where the sample cannot give one)."""

    value: float | None
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class Comparison:
    """A two-sample test: its name, statistic and two-sided p-value."""

    test: str
    statistic: float | None
    p_value: float | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < 1 - CONFIDENCE


def mean_ci(xs: Sequence[float]) -> Estimate:
    """Sample mean with a Student-t interval."""
    n = len(xs)
    if n == 0:
        return Estimate(None, None, None, 0)
    m = sum(xs) / n
    if n == 1:
        return Estimate(m, None, None, 1)
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    half = t_critical(n - 1) * math.sqrt(var / n)
    return Estimate(m, m - half, m + half, n)


def geometric_mean_ci(ratios: Sequence[float]) -> Estimate:
    """Geometric mean of positive ratios with a t interval on their logarithms (paired designs)."""
    logs = [math.log(r) for r in ratios]
    e = mean_ci(logs)
    if e.value is None:
        return e
    return Estimate(_exp(e.value), _exp(e.low), _exp(e.high), e.n)


def _exp(v: float | None) -> float | None:
    return math.exp(v) if v is not None else None


def proportion_ci(successes: int, n: int) -> Estimate:
    """Wilson score interval for a proportion."""
    if n == 0:
        return Estimate(None, None, None, 0)
    p, z = successes / n, z_critical()
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1 (centre = half there); rounding would leave ~1e-19.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, low, high, n)


def quantile_ci(xs: Sequence[float], q: float) -> Estimate:
    """Sample quantile (type 7) with a distribution-free interval from order statistics
    (normal approximation of the binomial count below the quantile)."""
    n = len(xs)
    if n == 0:
        return Estimate(None, None, None, 0)
    s = sorted(xs)
    half = z_critical() * math.sqrt(n * q * (1 - q))
    lo_i, hi_i = math.floor(n * q - half), math.ceil(n * q + half)
    low = s[lo_i - 1] if lo_i >= 1 else None
    high = s[hi_i - 1] if hi_i <= n else None
    return Estimate(quantile(s, q), low, high, n)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch's unequal-variance t-test of mean(a) - mean(b)."""
    if len(a) < 2 or len(b) < 2:
        return Comparison("welch-t", None, None)
    if len(set(a)) == 1 and len(set(b)) == 1:
        return Comparison("welch-t", None, 1.0 if a[0] == b[0] else 0.0)
    from scipy import stats

    r = stats.ttest_ind(a, b, equal_var=False)
    return Comparison("welch-t", float(r.statistic), float(r.pvalue))


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> Comparison:
    """Pooled two-proportion z-test of x1/n1 - x2/n2."""
    if n1 == 0 or n2 == 0:
        return Comparison("two-proportion-z", None, None)
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return Comparison("two-proportion-z", None, 1.0)
    from scipy import stats

    z = (x1 / n1 - x2 / n2) / se
    return Comparison("two-proportion-z", z, float(2 * stats.norm.sf(abs(z))))


def welch_t_test_from_stats(mean1: float, var1: float, n1: float, mean2: float, var2: float,
                            n2: float) -> Comparison:
    """Welch's t-test of mean1 - mean2 from summary statistics (e.g. binned data)."""
    if n1 < 2 or n2 < 2 or (var1 <= 0 and var2 <= 0):
        return Comparison("welch-t", None, None)
    from scipy import stats

    r = stats.ttest_ind_from_stats(mean1, math.sqrt(max(var1, 0.0)), n1, mean2, math.sqrt(max(var2, 0.0)), n2,
                                   equal_var=False)
    return Comparison("welch-t", float(r.statistic), float(r.pvalue))
