"""Sequential gates: always-valid comparisons of candidate and baseline (pure, no I/O).

A fixed-threshold gate checked every analysis interval has no stated error rate: checking a
noisy ratio again and again until it passes promotes on luck. A sequential gate instead keeps,
for each arm, the running mean of a per-request quantity over the whole step, and a
**confidence sequence** around it: an interval that covers the true mean at *every* request
count simultaneously with probability >= 1 - alpha, so the gate may be looked at as often as
the controller likes and stop the first time the interval is decisive.

The interval is the asymptotic confidence sequence of Waudby-Smith, Arnold, Wu, McAuliffe &
Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences" (Annals of
Statistics 2024; arXiv:2103.06476, Theorem 2.2 with Robbins' normal mixture):

    mean_t +/- sd_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

valid for any i.i.d. stream with finite variance as t grows (sd_t is the sample standard
deviation); `rho` sets the count where it is narrowest (`design_n`, eq. (2.6) of the paper:
rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / design_n). Two arms are compared through
their difference d = candidate - baseline: each arm's sequence at alpha/2, so the interval
for d, [low_c - high_b, high_c - low_b], covers d at every time with probability >= 1 - alpha
(union bound).

Decision with margin m (d > 0 means the candidate is worse):
    PASS          high(d) <  m   the candidate is not worse by more than m
    FAIL          low(d)  >  m   the candidate is worse by more than m
    INCONCLUSIVE  otherwise, or fewer than `MIN_N` requests on either arm
So P(ever PASS | true d >= m) <= alpha and P(ever FAIL | true d <= m) <= alpha.

Per metric (all from corral's own series, see `corral.rollout.promstats`):
- error_rate: 1 if a request was answered 5xx; d in proportion points. The variance uses
  (x + 1) / (n + 2) so a run of zero errors does not give a zero-width interval.
- latency, ttft, itl: log of the request's value, from histogram buckets (each observation at
  its bucket's geometric midpoint; buckets 12% apart put each log within +/- 0.057); d is the
  log of the ratio of geometric means, m = log(margin), reported back as ratios.
- quality_pass_rate: 1 if a /v1/feedback rating was above 0.5; worse = lower, so
  d = baseline - candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from corral.cluster.spec.rollout import MetricGate
from corral.rollout.gates import GateResult, Verdict

MIN_N = 10
"""Fewest observations per arm before a sequential gate may decide (the interval is asymptotic)."""

RATIO_METRICS = ("latency", "ttft", "itl")
LOWER_IS_WORSE = ("quality_pass_rate",)


@dataclass(frozen=True)
class ArmSample:
    """Sufficient statistics of one arm's per-request values over the step: count, mean, variance."""

    n: float
    mean: float
    var: float

    def to_list(self) -> list[float]:
        return [self.n, self.mean, self.var]

    @classmethod
    def from_list(cls, xs: Sequence[float]) -> ArmSample:
        return cls(float(xs[0]), float(xs[1]), float(xs[2]))


def bernoulli_sample(successes: float, n: float) -> ArmSample | None:
    """A 0/1 stream from counts; variance from (x + 1) / (n + 2) (never zero)."""
    if n <= 0:
        return None
    x = min(max(successes, 0.0), n)
    p_reg = (x + 1) / (n + 2)
    return ArmSample(n, x / n, p_reg * (1 - p_reg))


def log_histogram_sample(buckets: Sequence[tuple[float, float]]) -> ArmSample | None:
    """Mean and variance of log(value) from cumulative histogram buckets [(le, count), ...].

    Each bucket's observations sit at its geometric midpoint; the first bucket's lower edge is
    taken as half its upper edge, the +Inf bucket's observations at the last finite edge.
    """
    finite = sorted((le, c) for le, c in buckets if math.isfinite(le) and le > 0)
    total = max((c for _, c in buckets), default=0.0)
    if total <= 0 or not finite:
        return None
    points: list[tuple[float, float]] = []  # (log value, count)
    prev_le, prev_c = finite[0][0] / 2, 0.0
    for le, c in finite:
        k = max(0.0, c - prev_c)
        if k > 0:
            points.append((0.5 * (math.log(prev_le) + math.log(le)), k))
        prev_le, prev_c = le, max(prev_c, c)
    if total > prev_c:
        points.append((math.log(prev_le), total - prev_c))
    n = sum(k for _, k in points)
    mean = sum(v * k for v, k in points) / n
    var = sum(k * (v - mean) ** 2 for v, k in points) / max(n - 1, 1.0)
    return ArmSample(n, mean, var)


def rho_squared(alpha: float, design_n: int) -> float:
    """Robbins-mixture tuning that makes the boundary tightest at `design_n` observations."""
    l2 = -2 * math.log(alpha)
    return (l2 + math.log(l2 + 1)) / design_n


def half_width(sample: ArmSample, alpha: float, design_n: int) -> float:
    """Half-width of the asymptotic confidence sequence at level 1 - alpha after sample.n observations."""
    t, r2 = sample.n, rho_squared(alpha, design_n)
    sd = math.sqrt(max(sample.var, 0.0))
    return sd * math.sqrt(2 * (t * r2 + 1) / (t * t * r2) * math.log(math.sqrt(t * r2 + 1) / alpha))


def difference_interval(candidate: ArmSample, baseline: ArmSample, alpha: float,
                        design_n: int) -> tuple[float, float, float]:
    """(estimate, low, high) of candidate mean - baseline mean, time-uniform at level 1 - alpha."""
    hc, hb = half_width(candidate, alpha / 2, design_n), half_width(baseline, alpha / 2, design_n)
    d = candidate.mean - baseline.mean
    return d, d - hc - hb, d + hc + hb


def evaluate_sequential(gate: MetricGate, candidate: ArmSample | None, baseline: ArmSample | None) -> GateResult:
    """The gate's verdict, estimate and interval (ratios for latency metrics, points otherwise)."""
    assert gate.test == "sequential" and gate.metric is not None and gate.margin is not None
    ratio = gate.metric in RATIO_METRICS
    cand_value = None if candidate is None else (math.exp(candidate.mean) if ratio else candidate.mean)
    base_value = None if baseline is None else (math.exp(baseline.mean) if ratio else baseline.mean)

    def result(verdict: Verdict, est=None, low=None, high=None, msg="") -> GateResult:
        return GateResult(gate.name, verdict, cand_value, base_value, est, msg, low=low, high=high,
                          test="sequential", alpha=gate.alpha, margin=gate.margin)

    for role, s in (("candidate", candidate), ("baseline", baseline)):
        if s is None or s.n < MIN_N:
            have = 0 if s is None else int(s.n)
            return result(Verdict.INCONCLUSIVE, msg=f"{have} {gate.metric} observations for the {role} (need {MIN_N})")
    assert candidate is not None and baseline is not None  # the loop above returned otherwise
    d, low, high = difference_interval(candidate, baseline, gate.alpha, gate.design_n)
    if gate.metric in LOWER_IS_WORSE:
        d, low, high = -d, -high, -low
    bound = math.log(gate.margin) if ratio else gate.margin
    if ratio:
        est, lo, hi = math.exp(d), math.exp(low), math.exp(high)
        what = f"{gate.metric} candidate/baseline {est:.3g} [{lo:.3g}, {hi:.3g}]"
    else:
        est, lo, hi = d, low, high
        worse = "candidate - baseline" if gate.metric not in LOWER_IS_WORSE else "baseline - candidate"
        what = f"{gate.metric} {worse} {est:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    margin_txt = f"margin {gate.margin:g}"
    n_txt = f"n={int(candidate.n)}/{int(baseline.n)}"
    conf = f"{1 - gate.alpha:.0%} confidence sequence"
    if high < bound:
        return result(Verdict.PASS, est, lo, hi, f"{what} ({conf}, {n_txt}) below {margin_txt}: not worse")
    if low > bound:
        return result(Verdict.FAIL, est, lo, hi, f"{what} ({conf}, {n_txt}) above {margin_txt}: worse")
    return result(Verdict.INCONCLUSIVE, est, lo, hi, f"{what} ({conf}, {n_txt}) straddles {margin_txt}")


def evaluate_sequential_readings(gate: MetricGate, candidate: Sequence[float] | None,
                                 baseline: Sequence[float] | None) -> GateResult:
    """`evaluate_sequential` on [n, mean, variance] lists as they travel in `MetricReadings.samples`."""
    as_sample = (lambda xs: None if xs is None else ArmSample.from_list(xs))
    return evaluate_sequential(gate, as_sample(candidate), as_sample(baseline))
