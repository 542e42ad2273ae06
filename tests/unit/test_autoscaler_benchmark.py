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


def test_candidates_are_judged_paired_against_the_reference_run(tmp_path, capsys):
    short = ["--workloads", "decode-heavy", "--tuning", "decode-heavy", "--duration-s", "120", "--no-plots"]
    assert autoscaler_sim.main([str(tmp_path / "ref"), *short]) == 0
    ref = json.loads(capsys.readouterr().out)
    rc = autoscaler_sim.main([str(tmp_path / "cand"), *short, "--reference", str(tmp_path / "ref" / "result.json"),
                              "--candidate", "same:target_ongoing_requests=3", "--candidate", "wide:downscale_hysteresis=0.1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    row = report["workloads"]["decode-heavy"]
    # The current setting on the judging draw is the reference run's corral, request for request.
    cur = row["current"]["judging"]
    assert cur["slo_attainment"] == ref["workloads"]["decode-heavy"]["policies"]["corral"]["slo_attainment"]
    assert cur["replica_seconds"] == ref["workloads"]["decode-heavy"]["policies"]["corral"]["replica_seconds"]
    # The knee of the measured curve is 3: the "same" candidate changes nothing, so it is not kept.
    assert row["same"] == row["current"]
    same = report["candidates"]["same"]
    assert same["judging"] == same["tuning"] == {"better_on": [], "worse_on": []} and same["kept"] is False
    assert same["goal_met_judging"] == same["goal_met_judging_current"]
    with pytest.raises(SystemExit):
        autoscaler_sim.main([str(tmp_path / "bad"), *short, "--candidate", "x:downscale_hysteresis=0.1"])
