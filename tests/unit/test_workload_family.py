"""The workload family: seeded, documented generators with the shapes their names promise."""

from __future__ import annotations

import numpy as np
import pytest

from corral.autoscaler.sim.family import (
    CONVERSATION,
    DECODE_HEAVY,
    PREFILL_HEAVY,
    diurnal_rate,
    family,
    flash_crowd_rate,
    load_profile,
    mmpp_times,
    poisson_times,
)

FAM = family(1800.0)


def _rate(reqs, lo, hi):
    return sum(1 for r in reqs if lo <= r.arrival_s < hi) / (hi - lo)


def test_members_are_named_documented_and_seeded():
    assert {"conversation-a", "conversation-b", "mmpp-x3", "mmpp-x6", "mmpp-x10", "flash-crowd", "diurnal",
            "prefill-heavy", "decode-heavy", "mix"} <= set(FAM)
    for name, w in FAM.items():
        assert w.name == name and w.description and w.params
        a, b = w.requests(3), w.requests(3)
        assert a == b and len(a) > 500, name  # same seed, same requests
        assert all(x.arrival_s <= y.arrival_s for x, y in zip(a, a[1:]))
        assert all(r.context_tokens >= 1 and r.generated_tokens >= 1 for r in a)
        if "trace" not in w.params:
            assert w.requests(4) != a, name  # another seed, another draw


def test_mmpp_keeps_its_mean_rate_and_its_bursts():
    rng = np.random.default_rng(0)
    t = mmpp_times(5.0, 6.0, 240.0, 60.0, 200_000.0, rng)
    assert len(t) / 200_000 == pytest.approx(5.0, rel=0.05)
    per_min = np.histogram(t, bins=np.arange(0, 200_000, 60))[0] / 60
    low = 5.0 * 300 / (240 + 6 * 60)
    # Minutes inside a burst run near 6x the quiet rate; quiet minutes near the quiet rate.
    assert np.percentile(per_min, 97) == pytest.approx(6 * low, rel=0.2)
    assert np.percentile(per_min, 30) == pytest.approx(low, rel=0.2)


def test_flash_crowd_rises_five_fold_within_a_minute_holds_then_is_gone():
    w = FAM["flash-crowd"]
    p = w.params
    reqs = w.requests(0)
    start, hold_end = p["start_s"], p["start_s"] + p["rise_s"] + p["hold_s"]
    base = _rate(reqs, 0, start)
    assert base == pytest.approx(3.0, rel=0.1)
    assert _rate(reqs, start + 60, hold_end) == pytest.approx(5 * base, rel=0.1)
    assert _rate(reqs, hold_end, 1800) == pytest.approx(base, rel=0.15)
    f = flash_crowd_rate(2.0, 5, 100, 60, 300)
    assert (f(99), f(130), f(160), f(459), f(460)) == (2.0, 6.0, 10.0, 10.0, 2.0)


def test_diurnal_ramp_peaks_in_the_middle():
    reqs = FAM["diurnal"].requests(0)
    assert _rate(reqs, 0, 180) < 2.5 and _rate(reqs, 1620, 1800) < 2.5
    assert _rate(reqs, 810, 990) == pytest.approx(9.0, rel=0.12)
    r = diurnal_rate(1.0, 9.0, 100.0)
    assert (r(0), r(50), r(100)) == pytest.approx((1.0, 9.0, 1.0))


def test_prefill_and_decode_heavy_mixes_shift_the_token_work():
    def means(reqs):
        return np.mean([r.context_tokens for r in reqs]), np.mean([r.generated_tokens for r in reqs])

    conv_c, conv_g = means(FAM["mmpp-x3"].requests(0))
    pre_c, pre_g = means(FAM["prefill-heavy"].requests(0))
    dec_c, dec_g = means(FAM["decode-heavy"].requests(0))
    assert pre_c > 2.5 * conv_c and pre_g < conv_g / 2.5
    assert dec_g > 2.5 * conv_g and dec_c < conv_c / 2.5
    assert max(r.context_tokens for r in FAM["prefill-heavy"].requests(0)) <= PREFILL_HEAVY.max_context_tokens
    assert CONVERSATION.context_scale == DECODE_HEAVY.context_scale * 4


def test_poisson_thinning_follows_the_intensity():
    rng = np.random.default_rng(1)
    t = poisson_times(lambda x: 10.0 if x < 500 else 2.0, 10.0, 1000.0, rng)
    assert np.sum(t < 500) / 500 == pytest.approx(10.0, rel=0.08)
    assert np.sum(t >= 500) / 500 == pytest.approx(2.0, rel=0.15)


def test_load_profile_counts_every_request():
    reqs = FAM["mix"].requests(0)
    prof = load_profile(reqs, 30.0)
    assert sum(prof["rps"]) * 30 == pytest.approx(len(reqs))
    assert sum(prof["prompt_tokens_per_s"]) * 30 == pytest.approx(sum(r.context_tokens for r in reqs))
