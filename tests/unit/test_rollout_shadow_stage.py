"""The shadow stage of the rollout state machine, with a fake clock and fake readings
(as tests/unit/test_rollout_state.py): users stay on the baseline, the candidate's shadow
metrics are judged by the same gates, a failure rolls back before any user saw the candidate,
a pass hands over to step 1's weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_rollout_state import B, C, good, make_spec

from corral.cluster.spec.rollout import MetricGate, QualityGate, RolloutSpec, ShadowSpec
from corral.rollout.gates import MetricReadings
from corral.rollout.machine import (
    Command,
    Operator,
    Phase,
    QualityScores,
    RolloutState,
    Snapshot,
    Stage,
    decide,
    needs,
)


def shadow_spec(**over) -> RolloutSpec:
    return make_spec(shadow=ShadowSpec(**{"percent": 25, "duration_s": 30, "min_requests": 10, **over}))


class World:
    """Fake fleet: weights and the ingress's shadow setting land when the test says so (or at once)."""

    def __init__(self, spec):
        self.spec, self.now = spec, 1000.0
        self.state = RolloutState()
        self.weights = {B: 100, C: 0}
        self.shadow: dict = {}
        self.decisions = []
        self.analysed_shadow: list[bool] = []

    def tick(self, dt=0.0, metrics=None, commands=(), apply=True):
        self.now += dt
        n = needs(self.state, self.spec, self.now)
        if n.metrics:
            self.analysed_shadow.append(n.shadow)
            metrics = metrics or good()
        snap = Snapshot(weights=dict(self.weights), ready_replicas={B: 1, C: 1}, max_replicas={B: 4, C: 4},
                        metrics=metrics if n.metrics else None,
                        quality=QualityScores({B: 0.8, C: 0.85}, prompts=20) if n.quality else None,
                        commands=tuple(commands), shadow=dict(self.shadow))
        d, self.state = decide(snap, self.spec, self.state, self.now)
        if apply:
            self.weights, self.shadow = dict(self.state.desired_weights), dict(self.state.shadow)
        self.decisions.append(d)
        return d


def to_shadow(w: World) -> None:
    for _ in range(5):
        w.tick(1)
        if w.state.stage == Stage.SHADOW and w.state.step_started_at is not None:
            return
    raise AssertionError(f"never reached the shadow stage: {w.state}")


def test_shadow_is_off_by_default_and_validated():
    assert not make_spec().shadow.enabled and make_spec().shadow.percent == 0
    for bad in ({"percent": 101}, {"percent": -1}, {"duration_s": 0}, {"max_in_flight": 0}):
        with pytest.raises(ValueError):
            ShadowSpec(**bad)


def test_without_shadow_the_rollout_never_enters_the_stage():
    w = World(make_spec())
    for _ in range(200):
        w.tick(1)
        assert w.state.stage != Stage.SHADOW and w.state.shadow == {}
        if w.state.terminal:
            break
    assert w.state.phase == Phase.SUCCEEDED


def test_shadow_runs_after_the_golden_set_with_users_on_the_baseline_then_step_1():
    w = World(shadow_spec())
    w.tick()  # start -> golden set
    d = w.tick(1)
    assert d.operator == Operator.SHADOW and w.state.stage == Stage.SHADOW
    assert w.state.desired_weights == {B: 100, C: 0}
    assert w.state.shadow == {"arm": C, "percent": 25.0, "max_in_flight": 4, "timeout_s": 120.0}
    seen_weights = set()
    while w.state.stage == Stage.SHADOW:
        seen_weights.add(tuple(sorted(w.weights.items())))
        w.tick(1)
    assert seen_weights == {((B, 100), (C, 0))}  # users never moved while shadowing
    assert w.analysed_shadow and all(w.analysed_shadow)  # every shadow analysis read shadow series
    assert w.state.stage == Stage.SHIFTING and w.state.desired_weights == {B: 50, C: 50}
    assert w.state.shadow == {} and w.state.shadow_done
    assert "shadow stage passed" in w.decisions[-1].reason
    shadow_started = next(i for i, d in enumerate(w.decisions) if "shadow in effect" in d.reason)
    assert w.now - (1000 + shadow_started) >= 30  # lasted duration_s from when it took effect
    for _ in range(200):
        w.tick(1)
        assert w.state.stage != Stage.SHADOW
        if w.state.terminal:
            break
    assert w.state.phase == Phase.SUCCEEDED and not any(w.analysed_shadow[-3:])


def test_shadow_time_counts_from_when_the_ingress_runs_it():
    w = World(shadow_spec())
    w.tick()
    w.tick(1, apply=False)  # shadow intent written, not yet applied by the ingress
    for _ in range(5):
        d = w.tick(10, apply=False)
        assert w.state.step_started_at is None and "waiting for the ingress" in d.reason
    w.shadow = dict(w.state.shadow)
    w.tick(1)
    assert w.state.step_started_at == w.now


def test_failing_gate_on_shadow_traffic_rolls_back_and_the_candidate_never_served_users():
    w = World(shadow_spec())
    to_shadow(w)
    bad = good(err=0.5)
    w.tick(10, metrics=bad)
    d = w.tick(10, metrics=bad)  # failure_limit 1: the second failure rolls back
    assert d.operator == Operator.ROLLBACK and w.state.phase == Phase.ROLLED_BACK
    assert "error_rate" in d.reason
    assert w.state.shadow == {} and w.shadow == {}  # shadow off
    assert all(d.operator != Operator.SET_WEIGHTS for d in w.decisions)
    assert w.weights == {B: 100, C: 0}


def test_too_few_shadow_requests_never_end_the_stage_and_pause():
    w = World(shadow_spec(min_requests=100))
    to_shadow(w)
    for _ in range(5):
        w.tick(10, metrics=good(reqs=40))
    assert w.state.stage == Stage.SHADOW and w.state.phase == Phase.PAUSED
    assert "shadow stage" in w.state.pause_reason and w.weights == {B: 100, C: 0}


def test_feedback_gates_are_left_out_of_shadow_analyses():
    gates = [MetricGate(name="error_rate", query='x{arm="$arm"}', compare="ratio", max=2.0, floor=0.01),
             MetricGate(name="satisfaction", query='sum($feedback{arm="$arm"})', compare="ratio", min=0.9, floor=0.01),
             MetricGate(name="quality", test="sequential", metric="quality_pass_rate", margin=0.05)]
    assert [g.reads_user_feedback for g in gates] == [False, True, True]
    w = World(make_spec(gates=gates, shadow=ShadowSpec(percent=50, duration_s=20, min_requests=10)))
    to_shadow(w)
    readings = MetricReadings(values={"error_rate": {B: 0.0, C: 0.0}}, requests={B: 50, C: 50})
    d = w.tick(10, metrics=readings)
    assert [g.gate for g in d.gates] == ["error_rate"] and w.state.passed_in_step


def test_operator_promote_ends_the_shadow_and_abort_rolls_back():
    w = World(shadow_spec())
    to_shadow(w)
    d = w.tick(1, commands=[Command(seq=1, op="promote")])
    assert w.state.stage == Stage.SHIFTING and w.state.step == 0 and w.state.shadow == {}
    assert w.state.desired_weights == {B: 50, C: 50} and "shadow stage ended by operator" in d.reason
    w2 = World(shadow_spec())
    to_shadow(w2)
    w2.tick(1, commands=[Command(seq=1, op="abort")])
    assert w2.state.phase == Phase.ROLLED_BACK and w2.state.shadow == {} and w2.weights == {B: 100, C: 0}


def test_shifting_waits_until_the_shadow_is_off():
    w = World(shadow_spec())
    to_shadow(w)
    while w.state.stage == Stage.SHADOW:
        w.tick(5, apply=False)
    w.weights = dict(w.state.desired_weights)  # weights landed, the ingress still copies
    w.tick(1, apply=False)
    assert w.state.stage == Stage.SHIFTING
    w.shadow = {}
    w.tick(1)
    assert w.state.stage == Stage.BAKING


# -- the golden subset: the candidate's shadow answers to golden prompts in user traffic ------

def golden(passed, scored, **kw) -> MetricReadings:
    return replace(good(**kw), shadow_golden=[passed, scored])


def test_shadow_answers_worse_on_the_golden_subset_roll_back():
    """Baseline 0.80 on the 20-prompt golden set; the candidate passes 6 of 60 golden prompts in
    user traffic: the always-valid comparison shows a drop beyond max_drop (0.1) and, past
    failure_limit, rolls back before any user saw the candidate."""
    w = World(shadow_spec())
    to_shadow(w)
    w.tick(10, metrics=golden(6, 60))
    d = w.tick(10, metrics=golden(6, 60))
    assert d.operator == Operator.ROLLBACK and "shadow_golden" in d.reason
    g = next(g for g in d.gates if g.gate == "shadow_golden")
    assert g.test == "sequential" and g.advisory and g.candidate == pytest.approx(0.1) and g.baseline == 0.8
    assert g.low is not None and g.low > 0.1  # baseline - candidate, with its interval, beyond the margin
    assert w.weights == {B: 100, C: 0} and w.shadow == {}


def test_few_or_no_golden_prompts_never_hold_the_shadow_stage():
    for readings in (golden(0, 0), golden(3, 4), golden(17, 20)):  # none, too few, not decisive
        w = World(shadow_spec())
        to_shadow(w)
        while w.state.stage == Stage.SHADOW and not w.state.terminal:
            d = w.tick(5, metrics=readings)
            if d.gates:
                g = next(g for g in d.gates if g.gate == "shadow_golden")
                assert g.advisory and g.verdict.value != "fail", g
        assert w.state.stage == Stage.SHIFTING and "shadow stage passed" in w.decisions[-1].reason


def test_without_a_golden_set_score_the_golden_subset_is_not_judged():
    w = World(make_spec(quality=QualityGate(enabled=False), shadow=ShadowSpec(percent=25, duration_s=30,
                                                                               min_requests=10)))
    to_shadow(w)
    d = w.tick(10, metrics=golden(0, 60))
    assert [g.gate for g in d.gates] == ["error_rate", "ttft_p95"]
    w2 = World(shadow_spec(golden=False))
    to_shadow(w2)
    assert [g.gate for g in w2.tick(10, metrics=golden(0, 60)).gates] == ["error_rate", "ttft_p95"]
