"""The one trace reader and thinning, shared by the simulator and the load generator."""

from __future__ import annotations

import gzip

import pytest

from corral.autoscaler.sim import load_trace as sim_trace
from corral.common.traces import DEFAULT_TRACE, keep_mask, read_trace, scale_tokens, thin
from corral.loadtests.arrivals import load_trace as loadtest_rows
from corral.loadtests.arrivals import trace_schedule
from corral.loadtests.config import LoadConfig


def test_shipped_trace_is_package_data_with_attribution():
    assert DEFAULT_TRACE.is_file() and DEFAULT_TRACE.suffix == ".gz"
    assert "shared" not in DEFAULT_TRACE.parts
    data = DEFAULT_TRACE.parent
    assert "CC BY 4.0" in (data / "README.md").read_text() and "Splitwise" in (data / "README.md").read_text()
    assert "Attribution 4.0" in (data / "LICENSE-azure-trace.txt").read_text()
    rows = read_trace()
    assert len(rows) == 19366
    assert (rows[0].t_s, rows[0].context_tokens, rows[0].generated_tokens) == (0.0, 374, 44)
    assert rows[-1].t_s == pytest.approx(3501.722, abs=1e-3)  # 18:15:46.68 -> 19:14:08.40
    assert all(a.t_s <= b.t_s for a, b in zip(rows, rows[1:]))


def test_load_test_default_trace_is_the_shipped_one():
    assert LoadConfig().trace_path == str(DEFAULT_TRACE)
    LoadConfig(mode="trace").validate()  # exists on a clean install


def test_gzipped_and_plain_csv_read_alike(tmp_path):
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:01.5000000,10,3\n2023-11-16 18:00:00.0000000,7,2\n"
    plain, packed = tmp_path / "t.csv", tmp_path / "t.csv.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    rows = read_trace(plain)
    assert rows == read_trace(packed)
    # Sorted by time, the earliest at 0 even when it is not the first line.
    assert [(r.t_s, r.context_tokens) for r in rows] == [(0.0, 7), (1.5, 10)]


def test_keep_mask_is_seeded_and_keeps_the_share():
    a, b = keep_mask(20000, 0.25, seed=7), keep_mask(20000, 0.25, seed=7)
    assert a == b and sum(a) == pytest.approx(5000, rel=0.05)
    assert keep_mask(20000, 0.25, seed=8) != a
    assert keep_mask(3, 1.0) == [True] * 3
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="keep"):
            keep_mask(3, bad)
    with pytest.raises(ValueError, match="token_scale"):
        scale_tokens(10, 0)
    assert scale_tokens(10, 0.01) == 1 and scale_tokens(1000, 0.05) == 50


def test_same_seed_keeps_the_same_requests_in_simulator_and_load_test():
    keep, seed, scale = 0.3, 11, 0.1
    sim = sim_trace(keep=keep, seed=seed, token_scale=scale, limit_s=900)
    live = trace_schedule(loadtest_rows(), duration_s=900, keep=keep, seed=seed, token_scale=scale).arrivals
    assert len(sim) > 100
    assert [(r.arrival_s, r.context_tokens, r.generated_tokens) for r in sim] == \
        [(a.at_s, a.input_tokens, a.output_tokens) for a in live]
    # A replay that starts later keeps the same rows there (thinning is decided over the whole trace).
    later = trace_schedule(loadtest_rows(), start_s=600, duration_s=300, keep=keep, seed=seed, token_scale=scale)
    assert [a.at_s + 600 for a in later.arrivals] == pytest.approx([r.arrival_s for r in sim if r.arrival_s >= 600])
    # Another seed keeps other requests.
    other = sim_trace(keep=keep, seed=seed + 1, token_scale=scale, limit_s=900)
    assert [r.arrival_s for r in other] != [r.arrival_s for r in sim]
    assert thin(read_trace(), 1.0) == read_trace()
