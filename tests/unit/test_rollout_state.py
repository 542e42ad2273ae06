"""Every transition of the rollout state machine, with a fake clock and fake readings."""

from __future__ import annotations

import pytest

from corral.cluster.spec.rollout import MetricGate, QualityGate, RolloutSpec, RolloutStep
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

B, C = "llama2", "llama3"


def make_spec(**over) -> RolloutSpec:
    base = dict(
        route="chat", baseline=B, candidate=C,
        steps=[RolloutStep(weight=w, bake_s=20, min_requests=10) for w in (50, 70, 90, 100)],
        analysis_interval_s=10, min_window_s=5, analysis_window_s=60, min_sample_requests=5,
        failure_limit=1, inconclusive_limit=1, error_limit=1,
        gates=[MetricGate(name="error_rate", query="x{arm=\"$arm\"}", compare="ratio", max=2.0, floor=0.01),
               MetricGate(name="ttft_p95", query="y{arm=\"$arm\"}", compare="ratio", max=1.3, floor=0.05)],
        quality=QualityGate(min_score=0.5, max_drop=0.1),
    )
    base.update(over)
    return RolloutSpec(**base)


def good(err=0.0, ttft=0.2, reqs=50) -> MetricReadings:
    return MetricReadings(values={"error_rate": {B: 0.0, C: err}, "ttft_p95": {B: 0.2, C: ttft}},
                          requests={B: reqs, C: reqs})


class World:
    """Fake cluster + clock: weights take effect when the test says so (or at once)."""

    def __init__(self, spec, ready=None):
        self.spec, self.now = spec, 1000.0
        self.state = RolloutState()
        self.weights = {B: 100, C: 0}
        self.ready = ready if ready is not None else {B: 1, C: 1}
        self.status = None  # Serve deployment status per arm (None: not read)
        self.decisions = []

    def tick(self, dt=0.0, metrics=None, metrics_error=None, quality=None, commands=(), apply=True):
        self.now += dt
        n = needs(self.state, self.spec, self.now)
        if metrics is None and metrics_error is None and n.metrics:
            metrics = good()
        if quality is None and n.quality:
            quality = QualityScores({B: 0.8, C: 0.85})
        snap = Snapshot(weights=dict(self.weights), ready_replicas=dict(self.ready), max_replicas={B: 4, C: 4},
                        metrics=metrics if n.metrics else None,
                        metrics_error=metrics_error if n.metrics else None,
                        quality=quality if n.quality else None, commands=tuple(commands),
                        deployment_status=None if self.status is None else dict(self.status))
        d, self.state = decide(snap, self.spec, self.state, self.now)
        if apply:
            self.weights = dict(self.state.desired_weights)
        self.decisions.append(d)
        return d


def run_to_baking(w: World) -> None:
    for _ in range(6):
        w.tick(1)
        if w.state.stage == Stage.BAKING:
            return
    raise AssertionError(f"never reached baking: {w.state}")


def test_happy_path_promotes_50_70_90_100_then_succeeds():
    w = World(make_spec())
    d = w.tick()
    assert d.operator == Operator.START and w.state.phase == Phase.PROGRESSING
    assert w.state.stage == Stage.QUALITY and w.state.replica_floors == {C: 1}
    seen = []
    for _ in range(200):
        w.tick(1)
        if w.state.desired_weights.get(C) not in seen[-1:]:
            seen.append(w.state.desired_weights.get(C))
        if w.state.terminal:
            break
    assert w.state.phase == Phase.SUCCEEDED
    assert seen == [50, 70, 90, 100]
    assert w.weights == {B: 0, C: 100} and w.state.replica_floors == {}
    ops = [d.operator for d in w.decisions]
    assert ops.count(Operator.PROMOTE) == 3 and ops.count(Operator.SUCCEED) == 1
    # golden set once, before the first traffic (requested by the START decision itself)
    assert sum("running golden set" in d.reason for d in w.decisions) == 1


def test_no_promotion_before_bake_time_even_with_passing_analyses():
    w = World(make_spec())
    run_to_baking(w)
    start = w.state.step_started_at
    for _ in range(19):
        w.tick(1)
        assert w.state.step == 0, "promoted before bake_s"
    assert w.now - start == 19
    w.tick(1)
    assert w.state.step == 1


def test_weights_not_in_effect_keeps_shifting_and_bake_counts_from_effect():
    w = World(make_spec())
    w.tick()
    w.tick(1, apply=False)  # quality -> set weights, which the actuator has not landed yet
    assert w.state.stage == Stage.SHIFTING and w.state.desired_weights == {B: 50, C: 50}
    w.tick(5, apply=False)
    assert w.state.stage == Stage.SHIFTING
    w.weights = {B: 50, C: 50}
    w.tick(1)
    assert w.state.stage == Stage.BAKING and w.state.step_started_at == w.now


def test_failed_gate_rolls_back_after_failure_limit_within_two_intervals():
    w = World(make_spec())
    run_to_baking(w)
    t0 = w.now
    d1 = w.tick(10, metrics=good(err=0.5))
    assert d1.operator == Operator.ANALYSIS and w.state.failures == 1 and w.state.phase == Phase.PROGRESSING
    assert w.weights == {B: 50, C: 50}
    d2 = w.tick(10, metrics=good(err=0.5))
    assert d2.operator == Operator.ROLLBACK and w.state.phase == Phase.ROLLED_BACK
    assert w.weights == {B: 100, C: 0} and w.state.replica_floors == {}
    assert w.now - t0 <= 2 * w.spec.analysis_interval_s
    assert "error_rate" in d2.reason and any(g.gate == "error_rate" for g in d2.gates)


def test_failure_limit_zero_rolls_back_on_first_failure():
    w = World(make_spec(failure_limit=0))
    run_to_baking(w)
    assert w.tick(10, metrics=good(ttft=1.0)).operator == Operator.ROLLBACK


def test_gate_cannot_fail_on_too_few_requests():
    w = World(make_spec(failure_limit=0))
    run_to_baking(w)
    d = w.tick(10, metrics=good(err=0.5, reqs=2))
    assert d.operator == Operator.ANALYSIS and "inconclusive" in d.reason
    assert w.state.phase == Phase.PROGRESSING and w.state.failures == 0


def test_too_few_requests_never_promotes_and_pauses_after_inconclusive_limit():
    w = World(make_spec())
    run_to_baking(w)
    w.tick(10, metrics=good(reqs=3))
    w.tick(10, metrics=good(reqs=3))  # bake elapsed: inconclusive 1 (tolerated)
    assert w.state.phase == Phase.PROGRESSING and w.state.step == 0
    d = w.tick(10, metrics=good(reqs=3))
    assert d.operator == Operator.PAUSE and w.state.phase == Phase.PAUSED
    assert "evidence" in w.state.pause_reason and w.weights == {B: 50, C: 50}


def test_missing_gate_data_is_inconclusive_not_pass():
    w = World(make_spec())
    run_to_baking(w)
    nodata = MetricReadings(values={"error_rate": {B: 0.0, C: None}, "ttft_p95": {B: 0.2, C: 0.2}},
                            requests={B: 50, C: 50})
    for _ in range(3):
        w.tick(10, metrics=nodata)
        assert w.state.step == 0
    assert w.state.phase == Phase.PAUSED


def test_metric_source_down_goes_error_then_paused_never_promotes():
    w = World(make_spec())
    run_to_baking(w)
    d = w.tick(10, metrics_error="connection refused")
    assert d.operator == Operator.ERROR and w.state.phase == Phase.ERROR
    d = w.tick(10, metrics_error="connection refused")
    assert d.operator == Operator.PAUSE and w.state.phase == Phase.PAUSED
    assert "metric source" in w.state.pause_reason
    for _ in range(10):
        w.tick(10)
    assert w.state.step == 0 and w.weights == {B: 50, C: 50}


def test_error_then_recovery_returns_to_progressing():
    w = World(make_spec())
    run_to_baking(w)
    w.tick(10, metrics_error="timeout")
    assert w.state.phase == Phase.ERROR
    d = w.tick(10)
    assert w.state.phase == Phase.PROGRESSING and w.state.errors == 0
    assert d.operator in (Operator.ANALYSIS, Operator.PROMOTE)


def test_error_right_before_bake_end_blocks_promotion_until_a_fresh_pass():
    w = World(make_spec(error_limit=3))
    run_to_baking(w)
    w.tick(10)  # pass
    assert w.state.passed_in_step
    w.tick(10, metrics_error="down")  # bake elapsed, but the latest analysis errored
    assert w.state.step == 0 and w.state.phase == Phase.ERROR


def test_capacity_before_traffic_waits_for_warm_replicas():
    w = World(make_spec(quality=QualityGate(enabled=False)), ready={B: 4, C: 0})
    d = w.tick()
    assert d.operator == Operator.START and w.state.stage == Stage.CAPACITY
    assert w.state.replica_floors == {C: 2}  # ceil(50% of 4)
    assert w.weights == {B: 100, C: 0}
    w.ready[C] = 1
    w.tick(5)
    assert w.state.stage == Stage.CAPACITY and w.weights[C] == 0
    w.ready[C] = 2
    d = w.tick(5)
    assert d.operator == Operator.SET_WEIGHTS and w.weights == {B: 50, C: 50}


def test_next_step_raises_floor_before_raising_weight():
    w = World(make_spec(quality=QualityGate(enabled=False)), ready={B: 4, C: 2})
    run_to_baking(w)
    for _ in range(3):
        w.tick(10)
    assert w.state.step == 1 and w.state.stage == Stage.CAPACITY
    assert w.state.replica_floors == {C: 3} and w.weights == {B: 50, C: 50}
    w.ready[C] = 3
    w.tick(1)
    assert w.weights == {B: 30, C: 70}


def test_warmup_timeout_pauses_with_weights_unchanged():
    spec = make_spec(quality=QualityGate(enabled=False))
    spec.capacity.warmup_timeout_s = 30
    w = World(spec, ready={B: 1, C: 0})
    w.tick()
    w.tick(29)
    assert w.state.phase == Phase.PROGRESSING
    d = w.tick(2)
    assert d.operator == Operator.PAUSE and "warmup_timeout_s" in w.state.pause_reason
    assert w.weights == {B: 100, C: 0}
    # resume restarts the warm-up clock; replicas arrive; traffic moves
    w.tick(1, commands=[Command(1, "resume")])
    assert w.state.phase == Phase.PROGRESSING
    w.ready[C] = 1
    w.tick(1)
    assert w.weights == {B: 50, C: 50}


@pytest.mark.parametrize("scores,fragment", [({B: 0.8, C: 0.3}, "min_score"), ({B: 0.9, C: 0.7}, "max_drop")])
def test_quality_gate_failure_rolls_back_before_any_traffic(scores, fragment):
    w = World(make_spec())
    w.tick()
    d = w.tick(1, quality=QualityScores(scores))
    assert d.operator == Operator.ROLLBACK and fragment in d.reason
    assert w.weights == {B: 100, C: 0}


def test_quality_run_error_is_error_then_pause():
    w = World(make_spec())
    w.tick()
    assert w.tick(1, quality=QualityScores(error="endpoint down")).operator == Operator.ERROR
    assert w.state.stage == Stage.QUALITY and w.state.phase == Phase.ERROR
    assert w.tick(1, quality=QualityScores(error="endpoint down")).operator == Operator.PAUSE


def test_pending_waits_for_weights():
    spec = make_spec()
    d, s = decide(Snapshot(weights=None, ready_replicas={}, max_replicas={}), spec, RolloutState(), 0.0)
    assert d.operator == Operator.HOLD and s.phase == Phase.PENDING


def test_operator_pause_resume_promote_abort():
    w = World(make_spec())
    run_to_baking(w)
    d = w.tick(1, commands=[Command(1, "pause", reason="weekend")])
    assert d.operator == Operator.PAUSE and "weekend" in w.state.pause_reason
    w.tick(100)
    assert w.state.step == 0 and w.state.phase == Phase.PAUSED
    # a replayed command (seq already seen) is ignored
    assert w.tick(1, commands=[Command(1, "pause")]).operator == Operator.HOLD
    d = w.tick(1, commands=[Command(2, "resume")])
    assert d.operator == Operator.RESUME and w.state.phase == Phase.PROGRESSING
    d = w.tick(1, commands=[Command(3, "promote")])
    assert d.operator == Operator.PROMOTE and w.state.step == 1
    w.tick(1)
    assert w.weights == {B: 30, C: 70}
    d = w.tick(1, commands=[Command(4, "abort", reason="bad vibes")])
    assert d.operator == Operator.ROLLBACK and w.weights == {B: 100, C: 0}
    assert w.tick(1, commands=[Command(5, "resume")]).operator == Operator.HOLD
    assert w.state.phase == Phase.ROLLED_BACK


def test_promote_full_goes_to_last_step_then_succeeds():
    w = World(make_spec())
    run_to_baking(w)
    w.tick(1, commands=[Command(1, "promote", full=True)])
    assert w.state.step == 3
    run_to_baking(w)
    assert w.weights == {B: 0, C: 100}
    d = w.tick(1, commands=[Command(2, "promote", full=True)])
    assert d.operator == Operator.SUCCEED and w.state.phase == Phase.SUCCEEDED


def test_resume_ignored_when_not_paused():
    w = World(make_spec())
    run_to_baking(w)
    assert w.tick(1, commands=[Command(1, "resume")]).operator == Operator.HOLD


def test_final_step_compares_with_baseline_reference_when_baseline_has_no_traffic():
    w = World(make_spec(quality=QualityGate(enabled=False)))
    for _ in range(400):
        w.tick(1)
        if w.state.step == 3 and w.state.stage == Stage.BAKING:
            break
    assert w.state.baseline_reference["ttft_p95"] == pytest.approx(0.2)
    cold = MetricReadings(values={"error_rate": {B: None, C: 0.0}, "ttft_p95": {B: None, C: 0.5}},
                          requests={B: 0, C: 50})
    w.tick(10, metrics=cold)
    d = w.tick(10, metrics=cold)
    assert d.operator == Operator.ROLLBACK and "ttft_p95" in d.reason


def test_terminal_states_hold():
    w = World(make_spec())
    w.tick(commands=[Command(1, "abort")])
    assert w.state.phase == Phase.ROLLED_BACK
    assert w.tick(100).operator == Operator.HOLD


def test_decide_does_not_mutate_input_state():
    spec = make_spec()
    s0 = RolloutState()
    before = s0.model_dump()
    decide(Snapshot(weights={B: 100, C: 0}, ready_replicas={C: 1}, max_replicas={C: 1}), spec, s0, 5.0)
    assert s0.model_dump() == before


# -- dead arms ------------------------------------------------------------------------------


def dead_spec(**over):
    over = {"capacity": {"dead_after_s": 30},
            "steps": [RolloutStep(weight=w, bake_s=1000, min_requests=10) for w in (50, 100)], **over}
    return make_spec(quality=QualityGate(enabled=False), **over)


@pytest.mark.parametrize("status,ready", [("UNHEALTHY", 1), ("DEPLOY_FAILED", 0), ("HEALTHY", 0)])
def test_dead_candidate_rolls_back_after_the_bound(status, ready):
    w = World(dead_spec())
    w.status = {B: "HEALTHY", C: "HEALTHY"}
    run_to_baking(w)
    w.status[C], w.ready[C] = status, ready
    down_at = w.now + 1
    for _ in range(31):
        w.tick(1)
        assert w.state.phase == Phase.PROGRESSING, f"rolled back before dead_after_s at {w.now - down_at}s"
    d = w.tick(1)
    assert w.now - down_at == 31
    assert d.operator == Operator.ROLLBACK and w.state.phase == Phase.ROLLED_BACK
    assert f"candidate {C!r} is dead" in d.reason and "dead_after_s=30" in d.reason
    assert w.weights == {B: 100, C: 0} and w.state.replica_floors == {}


def test_candidate_that_recovers_within_the_bound_is_not_dead():
    w = World(dead_spec())
    w.status = {B: "HEALTHY", C: "HEALTHY"}
    run_to_baking(w)
    w.status[C] = "UNHEALTHY"
    w.tick(20)
    w.status[C] = "HEALTHY"
    w.tick(1)
    assert w.state.arms_down_since == {}
    w.status[C] = "UNHEALTHY"
    w.tick(20)  # a new down period starts here: 20 s, not 41
    w.tick(5)
    assert w.state.phase == Phase.PROGRESSING and w.state.arms_down_since == {C: w.now - 5}


def test_unknown_status_neither_starts_nor_clears_a_down_period():
    w = World(dead_spec())
    w.status = {B: "HEALTHY", C: "HEALTHY"}
    run_to_baking(w)
    w.status[C] = "DEPLOY_FAILED"
    w.tick(1)
    since = w.state.arms_down_since[C]
    w.status = None  # the dashboard did not answer
    for _ in range(40):
        w.tick(1)
    assert w.state.phase == Phase.PROGRESSING and w.state.arms_down_since == {C: since}
    w.status = {B: "HEALTHY", C: "DEPLOY_FAILED"}
    assert w.tick(1).operator == Operator.ROLLBACK


def test_candidate_without_traffic_and_zero_replicas_is_warming_not_dead():
    """Zero replicas count only while the arm has traffic: a candidate at 0% still warming
    up is the capacity stage's business (warmup_timeout_s), not a dead arm."""
    w = World(dead_spec(capacity={"dead_after_s": 30, "warmup_timeout_s": 1000}), ready={B: 1, C: 0})
    w.status = {B: "HEALTHY", C: "UPSCALING"}
    for _ in range(100):
        w.tick(1)
    assert w.state.phase == Phase.PROGRESSING and w.state.stage == Stage.CAPACITY
    assert w.state.arms_down_since == {}


def test_dead_baseline_pauses_and_holds_weights():
    w = World(dead_spec())
    w.status = {B: "HEALTHY", C: "HEALTHY"}
    run_to_baking(w)
    held = dict(w.weights)
    w.ready[B] = 0  # baseline has traffic and no running replica
    for _ in range(31):
        w.tick(1)
    assert w.state.phase == Phase.PROGRESSING
    d = w.tick(1)
    assert d.operator == Operator.PAUSE and w.state.phase == Phase.PAUSED
    assert f"baseline {B!r} is dead: zero running replicas at weight 50%" in w.state.pause_reason
    assert w.weights == held
    w.tick(1)
    assert w.state.phase == Phase.PAUSED  # a pause is not re-decided every tick


def test_dead_candidate_rolls_back_even_while_paused():
    w = World(dead_spec())
    w.status = {B: "HEALTHY", C: "HEALTHY"}
    run_to_baking(w)
    w.tick(1, commands=[Command(seq=1, op="pause")])
    assert w.state.phase == Phase.PAUSED
    w.status[C] = "UNHEALTHY"
    for _ in range(32):
        w.tick(1)
    assert w.state.phase == Phase.ROLLED_BACK and w.weights == {B: 100, C: 0}


def test_dead_arm_at_zero_weight_after_success_is_not_judged():
    w = World(dead_spec(steps=[RolloutStep(weight=x, bake_s=1, min_requests=1) for x in (50, 100)]))
    w.status = {B: "HEALTHY", C: "HEALTHY"}
    for _ in range(100):
        w.tick(1)
        if w.state.terminal:
            break
    assert w.state.phase == Phase.SUCCEEDED
    w.status[B], w.ready[B] = "UNHEALTHY", 0
    for _ in range(40):
        w.tick(1)
    assert w.state.phase == Phase.SUCCEEDED
