"""Controller loop: persistence before actuation, resume after a kill, commands via the store."""

from __future__ import annotations

import json
import threading

import pytest

from corral.cluster.spec.rollout import MetricGate, RolloutSpec, RolloutStep
from corral.rollout.actuators import InMemoryActuator
from corral.rollout.controller import Controller, RolloutConflict, enqueue_command, start_rollout
from corral.rollout.gates import MetricReadings
from corral.rollout.machine import Phase, QualityScores, Stage
from corral.rollout.metrics import MetricSourceError
from corral.rollout.store import FileStore

B, C = "llama2", "llama3"


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeSource:
    """Metric source whose answers the test controls; counts queries."""

    def __init__(self):
        self.err, self.down, self.calls = 0.0, False, []

    def collect(self, spec, window_s, elapsed_s):
        self.calls.append((window_s, elapsed_s))
        if self.down:
            raise MetricSourceError("connection refused")
        return MetricReadings(values={"error_rate": {B: 0.0, C: self.err}}, requests={B: 100, C: 100})


class FakeQuality:
    def __init__(self, scores):
        self.scores, self.runs = scores, 0

    def run(self, arms):
        self.runs += 1
        return QualityScores(dict(self.scores))


class Crash(Exception):
    pass


def make_spec(**over):
    d = dict(route="chat", baseline=B, candidate=C,
             steps=[RolloutStep(weight=w, bake_s=30, min_requests=10) for w in (50, 70, 90, 100)],
             analysis_interval_s=10, min_window_s=5, analysis_window_s=60, min_sample_requests=5,
             gates=[MetricGate(name="error_rate", query='e{arm="$arm"}', max=2.0, floor=0.01)])
    d.update(over)
    return RolloutSpec(**d)


def setup(tmp_path, spec=None, quality=(0.7, 0.8)):
    spec = spec or make_spec()
    clock, source = Clock(), FakeSource()
    act = InMemoryActuator({"chat": {B: 100, C: 0}}, ready={B: 1, C: 1})
    store = FileStore(tmp_path / "rollout.json")
    q = FakeQuality({B: quality[0], C: quality[1]})
    start_rollout(store, spec, clock())
    ctl = Controller(spec, {B: 2, C: 2}, source, act, store, clock=clock, quality_runner=q)
    return spec, clock, source, act, store, q, ctl


def drive(ctl, clock, ticks, dt=1.0):
    for _ in range(ticks):
        ctl.tick()
        if ctl.store.load().state.terminal:
            return
        clock.t += dt


def weight_changes(act):
    return [w[C] for kind, w in act.changes if kind == "weights"]


def test_good_candidate_promoted_with_one_change_per_step(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    drive(ctl, clock, 500)
    doc = store.load()
    assert doc.state.phase == Phase.SUCCEEDED
    assert weight_changes(act) == [50, 70, 90, 100]
    assert act.weights["chat"] == {B: 0, C: 100}
    assert act.floors == {} and ("floor", (C, 1)) in act.changes
    assert q.runs == 1
    ops = [e.operator for e in doc.events]
    assert ops[0] == "create" and ops[-1] == "succeed" and ops.count("promote") == 3


def test_bad_candidate_rolled_back_within_two_intervals(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    drive(ctl, clock, 5)
    assert store.load().state.stage == Stage.BAKING
    source.err = 0.4
    t0 = clock.t
    drive(ctl, clock, 100)
    assert store.load().state.phase == Phase.ROLLED_BACK
    assert clock.t - t0 <= 2 * spec.analysis_interval_s
    assert act.weights["chat"] == {B: 100, C: 0} and weight_changes(act) == [50, 0]


def test_prometheus_down_mid_rollout_pauses_and_holds_weights(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    drive(ctl, clock, 5)
    source.down = True
    drive(ctl, clock, 100)
    doc = store.load()
    assert doc.state.phase == Phase.PAUSED and weight_changes(act) == [50]
    assert [e.operator for e in doc.events].count("error") == 1


@pytest.mark.parametrize("crash_at_change", [1, 2, 3, 4])
@pytest.mark.parametrize("when", ["before_actuation", "after_actuation"])
def test_controller_killed_and_restarted_resumes_without_repeat_or_skip(tmp_path, crash_at_change, when):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    real_set = act.set_weights
    calls = {"n": 0}

    def flaky_set(route, weights):
        if act.get_weights(route) != weights:
            calls["n"] += 1
            if calls["n"] == crash_at_change and when == "before_actuation":
                raise Crash("killed between persist and actuation")
        changed = real_set(route, weights)
        if changed and calls["n"] == crash_at_change and when == "after_actuation":
            raise Crash("killed right after actuation")
        return changed

    act.set_weights = flaky_set
    with pytest.raises(Crash):
        drive(ctl, clock, 500)
    state_at_crash = store.load().state
    act.set_weights = real_set
    clock.t += 3  # the restart takes a while
    ctl2 = Controller(spec, {B: 2, C: 2}, source, act, store, clock=clock, quality_runner=q)
    assert store.load().state == state_at_crash
    drive(ctl2, clock, 500)
    assert store.load().state.phase == Phase.SUCCEEDED
    assert weight_changes(act) == [50, 70, 90, 100]
    assert q.runs == 1


def test_restart_does_not_restart_bake_time(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    drive(ctl, clock, 5)
    started = store.load().state.step_started_at
    clock.t += 20
    ctl2 = Controller(spec, {B: 2, C: 2}, source, act, store, clock=clock, quality_runner=q)
    drive(ctl2, clock, 12)
    st = store.load().state
    assert st.step == 1, "bake time must continue across restarts"
    assert clock.t - started < 2 * spec.steps[0].bake_s


def test_cli_commands_via_store_handled_once(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    drive(ctl, clock, 5)
    enqueue_command(store, "pause", clock(), reason="checking dashboards")
    ctl.tick()
    assert store.load().state.phase == Phase.PAUSED and store.load().commands == []
    enqueue_command(store, "resume", clock())
    enqueue_command(store, "promote", clock())
    ctl.tick()
    st = store.load().state
    assert st.phase == Phase.PROGRESSING and st.step == 1
    enqueue_command(store, "abort", clock())
    ctl.tick()
    assert store.load().state.phase == Phase.ROLLED_BACK and act.weights["chat"] == {B: 100, C: 0}


def test_start_refuses_while_active(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)
    with pytest.raises(RolloutConflict):
        start_rollout(store, spec, clock())
    assert start_rollout(store, spec, clock(), force=True).state.phase == Phase.PENDING


def test_file_store_is_valid_json_and_concurrent_updates_are_not_lost(tmp_path):
    spec, clock, source, act, store, q, ctl = setup(tmp_path)

    def writer():
        for _ in range(20):
            enqueue_command(store, "pause", 0.0)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = json.loads((tmp_path / "rollout.json").read_text())
    assert len(doc["commands"]) == 80
    assert sorted(c["seq"] for c in doc["commands"]) == list(range(1, 81))
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
