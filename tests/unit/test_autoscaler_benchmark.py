"""The autoscaler benchmark end to end on a short member: what it prints and how it judges."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("ray.serve.config")

import autoscaler_sim  # noqa: E402

from corral.autoscaler import sim as S  # noqa: E402


def test_benchmark_reports_each_member_against_the_oracle_and_rays_default(tmp_path, capsys):
    rc = autoscaler_sim.main([str(tmp_path), "--workloads", "decode-heavy", "--tuning", "decode-heavy",
                              "--duration-s", "120", "--no-plots"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["goal"] == S.GOAL_TEXT
    assert report["tuning"]["corral"]["chosen"] == report["knee_batch"]  # the capacity plan's target, no tuning
    member = report["workloads"]["decode-heavy"]
    assert member["held_out"] is True and member["requests"] > 100
    pol = member["policies"]
    assert set(pol) == {"corral", "ray_default", "oracle"}
    for p in pol.values():
        assert 0 <= p["slo_attainment"] <= 1 and p["replica_seconds"] > 0 and p["requests"] == member["requests"]
    # The verdict is the goal's, recomputed from the figures printed beside it.
    assert member["goal"] == S.judge(pol["corral"], pol["oracle"], pol["ray_default"], member["feasible_attainment"])
    row = report["summary"]["table"][0]
    assert row["workload"] == "decode-heavy" and row["met"] == member["goal"]["met"]
    assert json.loads((tmp_path / "result.json").read_text()) == report
