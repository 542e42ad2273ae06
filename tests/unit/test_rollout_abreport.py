"""A/B statistics against reference values (scipy-equivalent numbers computed by hand / known tables)."""

import random

import pytest

from corral.common.stats import (
    mean_ci,
    percentile,
    proportion_ci,
    quantile,
    quantile_ci,
    t_critical,
    t_sf_two_sided,
    two_proportion_z_test,
    welch_t_test,
)
from corral.rollout.ab import ab_report, group


def test_t_distribution_against_tables():
    assert t_critical(1) == pytest.approx(12.706, abs=1e-3)
    assert t_critical(10) == pytest.approx(2.228, abs=1e-3)
    assert t_critical(30) == pytest.approx(2.042, abs=1e-3)
    assert t_sf_two_sided(2.0, 10) == pytest.approx(0.07339, abs=1e-4)


def test_quantile_is_linear_interpolation_everywhere():
    # Hyndman & Fan type 7 (numpy's default): position (n-1)q between order statistics.
    xs = [10.0, 1.0, 4.0, 2.0, 3.0]
    assert quantile(xs, 0.5) == 3.0
    assert quantile(xs, 0.95) == pytest.approx(4 + 0.8 * 6)
    assert quantile(xs, 0.0) == 1.0 and quantile(xs, 1.0) == 10.0
    assert percentile(xs, 95) == quantile(xs, 0.95)
    assert quantile([], 0.5) is None
    with pytest.raises(ValueError):
        quantile(xs, 95)


def test_welch_matches_reference():
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    r = welch_t_test(a, b)
    # Reference (Welch 1947 example as used by Wikipedia): t = -2.46, df = 24.99, p = 0.021
    assert r.statistic == pytest.approx(-2.46, abs=0.01)
    assert r.p_value == pytest.approx(0.021, abs=0.001)
    assert r.significant


def test_two_proportion_z():
    r = two_proportion_z_test(30, 1000, 10, 1000)
    # p = 0.02, se = sqrt(0.02 * 0.98 * 0.002) = 0.0062610, z = 0.02 / se
    assert r.statistic == pytest.approx(3.1944, abs=1e-3)
    assert r.p_value == pytest.approx(0.0014, abs=1e-4)
    assert not two_proportion_z_test(11, 1000, 10, 1000).significant


def test_intervals_cover_the_truth_about_95_percent():
    rng = random.Random(7)
    covered_mean = covered_p = 0
    for _ in range(400):
        xs = [rng.gauss(1.0, 0.5) for _ in range(20)]
        e = mean_ci(xs)
        covered_mean += e.low <= 1.0 <= e.high
        k = sum(rng.random() < 0.1 for _ in range(200))
        p = proportion_ci(k, 200)
        covered_p += p.low <= 0.1 <= p.high
    assert 0.91 <= covered_mean / 400 <= 0.99
    assert 0.91 <= covered_p / 400 <= 0.99


def test_quantile_ci_brackets_sample_quantile():
    xs = list(range(1, 1001))
    e = quantile_ci([float(x) for x in xs], 0.95)
    assert e.value == pytest.approx(950.05) and e.low < 950 < e.high and e.high - e.low < 40


def test_report_detects_slower_candidate_and_costs():
    rng = random.Random(1)
    recs = [{"arm": "l2", "status": 200, "latency_s": rng.gauss(1.0, 0.1), "output_tokens": 100} for _ in range(200)]
    recs += [{"arm": "l3", "status": 200, "latency_s": rng.gauss(1.3, 0.1), "output_tokens": 100} for _ in range(195)]
    recs += [{"arm": "l3", "status": 503} for _ in range(5)]
    rows = {r.metric: r for r in ab_report(group(recs), "l2", "l3", 3600, 2.0, {"l2": 1, "l3": 1})}
    assert rows["latency_mean_s"].comparison.significant
    assert rows["error_rate"].estimates["l3"].value == pytest.approx(0.025)
    # $2 for an hour / 20,000 tokens = $100 per 1M
    assert rows["cost_per_1m_output_tokens_usd"].estimates["l2"].value == pytest.approx(100.0)
    assert rows["quality_score"].estimates["l2"].value is None


def test_wilson_bounds_are_exact_at_zero_and_all_successes():
    """At 0 (or n) successes the Wilson interval's lower (upper) bound is exactly 0 (1): the report
    once printed 2.2e-19 for an arm with no errors."""
    from corral.common.stats import proportion_ci

    none, all_ = proportion_ci(0, 1133), proportion_ci(923, 923)
    assert none.low == 0.0 and 0 < none.high < 0.004
    assert all_.high == 1.0 and 0.99 < all_.low < 1.0
