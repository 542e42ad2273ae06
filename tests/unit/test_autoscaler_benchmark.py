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
    assert same["tuning"] == {"better_on": [], "worse_on": []} and same["kept"] is False
    assert {k: same["judging"][k] for k in ("better_on", "worse_on", "better_at_95", "worse_at_95")} == {
        "better_on": [], "worse_on": [], "better_at_95": [], "worse_at_95": []}
    # One draw gives no interval: no paired verdict.
    assert same["judging"]["paired"]["decode-heavy"]["verdict"] is None
    assert same["judging"]["paired"]["decode-heavy"]["draws"] == 1
    # The verdicts recomputed from the draws the report holds are the report's own.
    assert autoscaler_sim.rejudge(report)["candidates"] == report["candidates"]
    assert same["goal_met_judging"] == same["goal_met_judging_current"]
    with pytest.raises(SystemExit):
        autoscaler_sim.main([str(tmp_path / "bad"), *short, "--candidate", "x:downscale_hysteresis=0.1"])


def test_candidates_judge_the_reference_draws_whatever_their_seed(tmp_path, capsys):
    """References drawn with `--seed` (here the tuning seed and the held-out one) each judge the
    candidates on their own draws against their own oracle; per member the draws' mean decides."""
    short = ["--workloads", "decode-heavy", "--tuning", "decode-heavy", "--duration-s", "120", "--no-plots"]
    refs = {}
    for seed in (autoscaler_sim.TUNING_SEED, autoscaler_sim.JUDGE_SEED):
        assert autoscaler_sim.main([str(tmp_path / f"ref{seed}"), *short, "--seed", str(seed)]) == 0
        refs[seed] = json.loads(capsys.readouterr().out)
        assert refs[seed]["workloads"]["decode-heavy"]["seed"] == seed and f"at seed {seed}" in refs[seed]["protocol"]
    rc = autoscaler_sim.main([str(tmp_path / "cand"), *short, "--candidate-draws", "judging",
                              *(a for seed in refs for a in ("--reference", str(tmp_path / f"ref{seed}" / "result.json"))),
                              "--candidate", "same:target_ongoing_requests=3"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    judging = report["workloads"]["decode-heavy"]["current"]["judging"]
    assert "tuning" not in report["workloads"]["decode-heavy"]["current"]
    # Each draw is its reference's corral run, request for request; the member's figures are their mean.
    assert [d["seed"] for d in judging["draws"]] == list(refs)
    for d, ref in zip(judging["draws"], refs.values()):
        corral = ref["workloads"]["decode-heavy"]["policies"]["corral"]
        assert (d["slo_attainment"], d["replica_seconds"]) == (corral["slo_attainment"], corral["replica_seconds"])
        assert d["goal"]["met"] == ref["workloads"]["decode-heavy"]["goal"]["met"]
    assert judging["slo_attainment"] == pytest.approx(sum(d["slo_attainment"] for d in judging["draws"]) / 2, abs=1e-5)
    assert judging["goal_met"] == sum(d["goal"]["met"] for d in judging["draws"]) and judging["draws_judged"] == 2
    assert report["candidates"]["same"]["draws_judged"] == 2


def _member(seed: int, attainment: float, vs_oracle: float, met: bool, trace: bool = False) -> dict:
    pol = {"slo_attainment": attainment, "replica_seconds": 100.0 * vs_oracle, "scale_events": 3}
    return {"seed": seed, "held_out": True, "params": {"trace": "t.csv"} if trace else {"mean_rps": 5.0},
            "policies": {"corral": pol, "ray_default": {**pol, "slo_attainment": 0.5},
                         "oracle": {**pol, "slo_attainment": 0.99, "replica_seconds": 100.0}},
            "goal": {"met": met, "attainment_met": met, "better_than_ray_default": True,
                     "replica_seconds_vs_oracle": vs_oracle},
            "ray_default_goal": {"replica_seconds_vs_oracle": 2.0}}


def test_draws_summary_counts_each_draw_once_and_the_trace_once(tmp_path):
    import autoscaler_sim_draws

    refs = [{"goal": S.GOAL_TEXT, "protocol": "p", "workloads": {
        "bursty": _member(seed, att, cost, met), "trace": _member(seed, 0.995, 1.1, True, trace=True)}}
        for seed, att, cost, met in ((1, 0.99, 1.1, True), (5, 0.90, 2.0, False), (6, 0.93, 1.7, False))]
    summary = autoscaler_sim_draws.summarize(refs)
    bursty, trace = summary["workloads"]["bursty"], summary["workloads"]["trace"]
    assert bursty["draws"] == 3 and bursty["seeds"] == [1, 5, 6] and bursty["goal_met"] == 1
    assert bursty["corral_slo_attainment"] == {"mean": pytest.approx(0.94), "min": 0.90, "max": 0.99}
    assert bursty["corral_replica_seconds_vs_oracle"]["max"] == 2.0
    assert trace["draws"] == 1 and trace["goal_met"] == 1  # the same requests at every seed: one draw
    table = autoscaler_sim_draws.markdown(summary)
    assert "| bursty | 1 of 3 | 94.00% [90.00%, 99.00%] |" in table and "| trace | 1 of 1 |" in table
    (tmp_path / "r.json").write_text(json.dumps(refs[0]))
    with pytest.raises(SystemExit):  # the same draws twice would count one draw two times
        autoscaler_sim_draws.main([str(tmp_path / "r.json")] * 2)
    # Under replica faults each seed is another fault draw, on the trace too: every draw counts.
    faulted = autoscaler_sim_draws.summarize([{**r, "replica_mtbf_s": 600.0} for r in refs])
    assert faulted["workloads"]["trace"]["draws"] == 3 and faulted["workloads"]["trace"]["seeds"] == [1, 5, 6]


def test_losses_rerun_the_reference_draw_and_trace_the_reactive_frontier(tmp_path, capsys):
    import autoscaler_sim_losses

    assert autoscaler_sim.main([str(tmp_path), "--workloads", "decode-heavy", "--tuning", "decode-heavy",
                                "--duration-s", "120", "--no-plots"]) == 0
    ref = json.loads(capsys.readouterr().out)
    out = tmp_path / "losses.json"
    assert autoscaler_sim_losses.main([str(tmp_path / "result.json"), "--headrooms", "1,2", "--memories", "0,60",
                                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    row, member = report["workloads"]["decode-heavy"], ref["workloads"]["decode-heavy"]
    # The same draw and oracle as the reference: corral's figures are the reference's.
    assert row["corral"]["slo_attainment"] == round(member["policies"]["corral"]["slo_attainment"], 5)
    assert row["oracle"]["replica_seconds"] == round(member["policies"]["oracle"]["replica_seconds"])
    grid = row["reactive_reference"]
    assert [(p["headroom"], p["memory_s"]) for p in grid] == [(1, 0), (1, 60), (2, 0), (2, 60)]
    # Memory and headroom only add replicas: never fewer replica-seconds than without them.
    by = {(p["headroom"], p["memory_s"]): p for p in grid}
    assert by[(1, 60)]["replica_seconds_vs_oracle"] >= by[(1, 0)]["replica_seconds_vs_oracle"]
    assert by[(2, 0)]["replica_seconds_vs_oracle"] >= by[(1, 0)]["replica_seconds_vs_oracle"]
    assert row["reactive_frontier"] == autoscaler_sim_losses.frontier(grid, S.attainment_bar(member["feasible_attainment"]),
                                                                      row["corral"])
    # Summed over draws (here the same output twice: two draws of the member).
    capsys.readouterr()
    assert autoscaler_sim_losses.main([str(out), str(out), "--summarize"]) == 0
    table = capsys.readouterr().out
    line = next(r for r in table.splitlines() if r.startswith("| decode-heavy |"))
    assert " of 2 member-draws, worse on both on " in table.splitlines()[-1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    meets = int(row["reactive_frontier"]["meets_bar_within_cap"])
    assert cells[1] == "2" and cells[2] == f"{2 * meets} of 2"
    assert cells[5].startswith(f"{100 * row['corral']['slo_attainment']:.1f}% at ")


def test_reactive_frontier_reads_the_grid_against_the_bar_and_the_cap():
    from autoscaler_sim_losses import frontier

    grid = [{"headroom": 1, "memory_s": 0, "slo_attainment": 0.95, "replica_seconds_vs_oracle": 1.0},
            {"headroom": 1, "memory_s": 300, "slo_attainment": 0.985, "replica_seconds_vs_oracle": 1.1},
            {"headroom": 2, "memory_s": 0, "slo_attainment": 0.992, "replica_seconds_vs_oracle": 1.6},
            {"headroom": 2, "memory_s": 300, "slo_attainment": 0.999, "replica_seconds_vs_oracle": 2.2}]
    f = frontier(grid, 0.99, {"slo_attainment": 0.98, "replica_seconds_vs_oracle": 1.8})
    assert not f["meets_bar_within_cap"] and f["best_within_cap"] == grid[1] and f["cheapest_at_bar"] == grid[2]
    assert f["corral_replica_seconds_vs_cheapest_at_bar"] == 1.125 and not f["corral_meets_bar"]
    assert f["cheapest_as_good_as_corral"] == grid[1]  # more attainment at fewer replica-seconds than corral
    f = frontier(grid, 0.98, {"slo_attainment": 0.99, "replica_seconds_vs_oracle": 1.05})
    assert f["meets_bar_within_cap"] and f["best_within_cap"] == grid[1]
    assert f["cheapest_as_good_as_corral"] is None and f["corral_meets_bar"]  # corral beyond the grid's frontier


def _draws(att: list[float], rs: list[float]) -> list[dict]:
    return [{"slo_attainment": a, "replica_seconds": r} for a, r in zip(att, rs)]


def test_paired_verdict_needs_an_interval_beyond_the_tolerance():
    """A paired verdict over draws: worse where an interval lies wholly past the tolerance (0.1 point,
    1%) on the worse side; better where one lies past it on the better side and the other is
    non-inferior; otherwise none, however the means compare."""
    base = _draws([0.95, 0.90, 0.98, 0.85], [1000, 2000, 1500, 3000])
    same = autoscaler_sim.paired_over_draws(base, base)
    assert same["verdict"] is None and same["attainment_pt"] == [0.0, 0.0, 0.0]
    assert same["replica_seconds_ratio"] == [1.0, 1.0, 1.0] and same["draws"] == 4
    # 0.5 point less on every draw (within 0.05): worse, though the cost is the same.
    less = _draws([a - 0.005 + d for a, d in zip([0.95, 0.90, 0.98, 0.85], [0.0005, -0.0005, 0.0003, -0.0003])],
                  [1000, 2000, 1500, 3000])
    assert autoscaler_sim.paired_over_draws(base, less)["verdict"] == "worse"
    # 5% fewer replica-seconds on every draw, attainment equal: better; with 0.5 point less: worse.
    cheaper = _draws([0.95, 0.90, 0.98, 0.85], [950, 1910, 1420, 2850])
    assert autoscaler_sim.paired_over_draws(base, cheaper)["verdict"] == "better"
    cheaper_less = _draws([0.945, 0.895, 0.975, 0.845], [950, 1910, 1420, 2850])
    assert autoscaler_sim.paired_over_draws(base, cheaper_less)["verdict"] == "worse"
    # A trade-off (cheaper, attainment down 0.05-1 point, its interval straddling the tolerance): none.
    trade = _draws([0.9495, 0.89, 0.9795, 0.849], [950, 1910, 1420, 2850])
    assert autoscaler_sim.paired_over_draws(base, trade)["verdict"] is None
    # Means that the mean rule calls better (+1 point on average), spread +-3 points: none.
    noisy = _draws([0.98, 0.87, 1.0, 0.87], [1000, 2000, 1500, 3000])
    p = autoscaler_sim.paired_over_draws(base, noisy)
    assert p["attainment_pt"][0] == pytest.approx(1.0) and p["verdict"] is None
    # Within the tolerance, however tight the interval (0.05 point less, 0.5% more): none.
    slight = _draws([0.9495, 0.8995, 0.9795, 0.8495], [1005, 2010, 1507.5, 3015])
    assert autoscaler_sim.paired_over_draws(base, slight)["verdict"] is None
    # One draw: no interval.
    assert autoscaler_sim.paired_over_draws(base[:1], cheaper[:1])["verdict"] is None
