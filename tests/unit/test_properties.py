"""Property tests (hypothesis) for the invariants users rely on: the split, the rollout state
machine, the cluster planner and the per-key rate limiter. Each property states the invariant in
its name; hypothesis searches for a counterexample and shrinks it when it finds one."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from corral.cluster import catalog
from corral.cluster.planner import InfeasiblePlan, PlanRequest, plan_cluster, stage_layers, valid_tensor_parallel_sizes
from corral.cluster.spec.rollout import MetricGate, QualityGate, RolloutSpec, RolloutStep
from corral.rollout.gates import MetricReadings
from corral.rollout.machine import (
    TERMINAL,
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
from corral.serving.auth import KeyRing, hash_key
from corral.serving.split import pick_arm

ARMS = ["a", "b", "c", "d"]


def _weights(n_min=2, n_max=4):
    """Integer weights summing to 100 over 2-4 arms, each at least 1."""
    return st.lists(st.integers(1, 100), min_size=n_min, max_size=n_max).map(
        lambda raw: _to_100(dict(zip(ARMS, raw))))


def _to_100(raw: dict[str, int]) -> dict[str, int]:
    total = sum(raw.values())
    w = {a: max(1, v * 100 // total) for a, v in raw.items()}
    w[max(w, key=w.get)] += 100 - sum(w.values())
    return w


# -- the split (serving/split.py) --------------------------------------------------------------

USERS = [f"user-{i}" for i in range(4000)]


@settings(max_examples=25, deadline=None)
@given(weights=_weights(), salt=st.integers(0, 10**6))
def test_sticky_shares_match_random_weights(weights, salt):
    users = [f"{salt}-{u}" for u in USERS]
    counts = Counter(pick_arm(weights, u) for u in users)
    n = len(users)
    for arm, w in weights.items():
        p = w / 100
        sd = math.sqrt(p * (1 - p) / n)
        # 5 binomial standard deviations (plus 0.2 points): a miss is a bias, not bad luck.
        assert abs(counts[arm] / n - p) <= 5 * sd + 0.002, (weights, counts)


@settings(max_examples=40, deadline=None)
@given(weights=_weights(), data=st.data())
def test_raising_one_arm_moves_users_only_to_it(weights, data):
    grow = data.draw(st.sampled_from(sorted(weights)))
    # Raise `grow` by delta points; the others keep their relative shares (pick_arm compares
    # weights relative to each other, so this is the others shrinking proportionally to make room,
    # as the baseline does in a two-arm rollout). Taking the points unevenly from the others can
    # move users between them too: that is not "raising one arm".
    delta = data.draw(st.integers(1, 500))
    new = {**weights, grow: weights[grow] + delta}
    for u in USERS[:1500]:
        before, after = pick_arm(weights, u), pick_arm(new, u)
        assert before == after or after == grow, (u, weights, new, before, after)


@settings(max_examples=40, deadline=None)
@given(old=_weights(), data=st.data())
def test_sticky_user_never_leaves_an_arm_whose_weight_grows(old, data):
    # Any new weights where arm `a` grows (relative to every other arm: the others may shrink,
    # vanish, or grow by a smaller factor): a user on `a` stays on `a`.
    a = data.draw(st.sampled_from(sorted(old)))
    factor_a = data.draw(st.floats(1.0, 5.0))
    new = {arm: old[arm] * (factor_a if arm == a else data.draw(st.floats(0.0, factor_a))) for arm in old}
    for u in USERS[:1500]:
        if pick_arm(old, u) == a:
            assert pick_arm(new, u) == a, (u, old, new)


# -- the rollout state machine (rollout/machine.py decide) -------------------------------------

B, C = "base", "cand"


@st.composite
def rollout_specs(draw):
    weights = sorted(draw(st.sets(st.integers(1, 99), max_size=4))) + [100]
    steps = [RolloutStep(weight=w, bake_s=draw(st.sampled_from([0, 10, 30])),
                         min_requests=draw(st.sampled_from([0, 10, 100]))) for w in weights]
    return RolloutSpec(
        route="r", baseline=B, candidate=C, steps=steps,
        analysis_interval_s=10, min_window_s=5, analysis_window_s=60, min_sample_requests=5,
        failure_limit=draw(st.integers(0, 2)), inconclusive_limit=draw(st.integers(0, 2)),
        error_limit=draw(st.integers(0, 2)),
        gates=[MetricGate(name="ttft_p95", query='y{arm="$arm"}', compare="ratio", max=1.3, floor=0.05)],
        quality=QualityGate(enabled=draw(st.booleans()), min_score=0.5, max_drop=0.1,
                            every_step=draw(st.booleans())),
    )


READINGS = ["pass", "pass_few", "fail", "no_data", "source_error"]
"""pass: gates pass on plenty of requests; pass_few: gates pass on 1 request per arm; fail: the
candidate's TTFT is 10x the baseline's on plenty of requests; no_data: no candidate value;
source_error: Prometheus unreachable."""

# Repeated entries weight the draw: most ticks are quiet and pass, so rollouts get far enough to promote.
tick_events = st.fixed_dictionaries({
    "dt": st.sampled_from([0.0, 1.0, 10.0, 10.0, 10.0, 30.0]),
    "apply": st.sampled_from([True, True, True, False]),
    "ready": st.sampled_from([0, 1, 2, 2, 3]),
    "reading": st.sampled_from(["pass"] * 2 + ["pass_few"] * 2 + READINGS),
    "quality": st.sampled_from(["pass"] * 4 + ["fail", "error"]),
    "commands": st.sampled_from([[]] * 12 + [["pause"], ["resume"], ["promote"], ["promote_full"], ["abort"],
                                             ["pause", "resume"], ["resume", "promote"]]),
    "replay": st.sampled_from([False, False, False, True]),
})


def _readings(kind: str) -> tuple[MetricReadings | None, str | None]:
    many, few = 10**6, 1
    if kind == "source_error":
        return None, "connection refused"
    values = {"pass": {B: 0.2, C: 0.2}, "pass_few": {B: 0.2, C: 0.2}, "fail": {B: 0.2, C: 2.0},
              "no_data": {B: 0.2, C: None}}[kind]
    n = few if kind == "pass_few" else many
    return MetricReadings(values={"ttft_p95": values}, requests={B: n, C: n}), None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=rollout_specs(), events=st.lists(tick_events, min_size=1, max_size=80))
def test_rollout_invariants_under_random_worlds(spec, events):
    allowed_weights = [{B: 100 - s.weight, C: s.weight} for s in spec.steps] + [{B: 100, C: 0}, {B: 0, C: 100}]
    state, now, seq = RolloutState(), 1000.0, 0
    world_weights = {B: 100, C: 0}
    sent: list[Command] = []
    last_reading_in_step: str | None = None
    for ev in events:
        now += ev["dt"]
        commands = []
        for op in ev["commands"]:
            seq += 1
            cmd = Command(seq, "promote" if op.startswith("promote") else op, full=op == "promote_full")
            commands.append(cmd)
        if ev["replay"] and sent:
            commands.append(sent[0])  # an old command, already handled
        sent += commands
        n = needs(state, spec, now)
        metrics, metrics_error = _readings(ev["reading"]) if n.metrics else (None, None)
        quality = None
        if n.quality:
            quality = {"pass": QualityScores({B: 0.8, C: 0.8}), "fail": QualityScores({B: 0.8, C: 0.1}),
                       "error": QualityScores(error="golden set timed out")}[ev["quality"]]
        snap = Snapshot(weights=dict(world_weights), ready_replicas={B: 2, C: ev["ready"]}, max_replicas={B: 4, C: 4},
                        metrics=metrics, metrics_error=metrics_error, quality=quality, commands=tuple(commands))
        before = state
        decision, state = decide(snap, spec, before, now)
        new_commands = [c for c in commands if c.seq > before.last_command_seq]
        operator_moved = any(c.op in ("promote", "resume", "abort") for c in new_commands)

        # Weights are always a step's weight, or all on one arm (none asked for before the start).
        assert state.desired_weights in allowed_weights or (state.started_at is None and not state.desired_weights), \
            state.desired_weights
        # Terminal states stay terminal, with their weights.
        if before.phase in TERMINAL:
            assert state.phase == before.phase and state.desired_weights == before.desired_weights
        # Never raised while paused or in error: a tick that ends paused or in error, or starts
        # paused without an operator's resume/promote, leaves the candidate's weight where it was.
        cand_before = before.desired_weights.get(C, 0)
        cand_after = state.desired_weights.get(C, 0)
        if state.phase in (Phase.PAUSED, Phase.ERROR) or (before.phase == Phase.PAUSED and not operator_moved):
            assert cand_after <= cand_before, (before.phase, state.phase, decision)
        # In error, an unreachable metric source never raises it (when the tick asked for metrics;
        # a golden-set retry that passes needs none and may go on to the step's weight).
        if before.phase == Phase.ERROR and metrics_error is not None and not operator_moved:
            assert cand_after <= cand_before, decision
        # Never promoted without a passing analysis on enough requests, after the bake time.
        if metrics is not None or metrics_error is not None:
            last_reading_in_step = ev["reading"]
        auto_promoted = (state.step > before.step or state.phase == Phase.SUCCEEDED != before.phase) \
            and not operator_moved
        if auto_promoted:
            step = spec.steps[before.step]
            assert before.phase in (Phase.PROGRESSING, Phase.ERROR) and before.stage == Stage.BAKING, decision
            assert last_reading_in_step == "pass" or (last_reading_in_step == "pass_few" and step.min_requests <= 1), \
                (last_reading_in_step, decision)
            assert now - before.step_started_at >= step.bake_s
        if state.step != before.step or state.stage != before.stage and state.stage == Stage.BAKING:
            last_reading_in_step = None
        # Replayed commands are no-ops: deciding again on the same snapshot with its commands gives the
        # same state as without them.
        if commands:
            _, again = decide(snap, spec, state, now)
            _, without = decide(Snapshot(**{**snap.__dict__, "commands": ()}), spec, state, now)
            assert again.model_dump(exclude={"reason"}) == without.model_dump(exclude={"reason"})
        if ev["apply"] or decision.operator == Operator.ROLLBACK:
            world_weights = dict(state.desired_weights) if state.desired_weights else world_weights


# -- the cluster planner (cluster/planner.py) ---------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(model=st.sampled_from(list(catalog.MODELS)), gpu=st.sampled_from(list(catalog.GPUS)),
       gpus_per_node=st.sampled_from([1, 2, 3, 4, 6, 8, 16]), nodes=st.integers(1, 4), concurrency=st.integers(1, 32))
def test_planned_tp_divides_both_head_counts_and_stages_sum_to_the_layers(model, gpu, gpus_per_node, nodes,
                                                                          concurrency):
    arch = catalog.model(model)
    for tp in valid_tensor_parallel_sizes(arch, gpus_per_node):
        assert arch.num_attention_heads % tp == 0 and arch.num_key_value_heads % tp == 0 and tp <= gpus_per_node
    try:
        plan = plan_cluster(PlanRequest(model=model, gpu_type=gpu, gpus_per_node=gpus_per_node, nodes=nodes,
                                        concurrency=concurrency, max_model_len=2048))
    except InfeasiblePlan:
        assume(False)
        return
    for c in plan.candidates:
        assert arch.num_attention_heads % c.tp == 0 and arch.num_key_value_heads % c.tp == 0
        assert sum(c.stage_layers) == arch.num_hidden_layers and len(c.stage_layers) == c.pp


@given(layers=st.integers(1, 200), data=st.data())
def test_stage_layers_sum_to_the_total_and_differ_by_at_most_one(layers, data):
    pp = data.draw(st.integers(1, layers))
    parts = stage_layers(layers, pp)
    assert len(parts) == pp and sum(parts) == layers
    assert max(parts) - min(parts) <= 1 and min(parts) >= 1


# -- the per-key rate limiter (serving/auth.py) -------------------------------------------------

def _ring(rpm=None, tpm=None) -> tuple[KeyRing, str]:
    key = {"name": "k", "sha256": hash_key("sk"), "scopes": ["inference"]}
    if rpm:
        key["requests_per_minute"] = rpm
    if tpm:
        key["tokens_per_minute"] = tpm
    ring = KeyRing.from_config({"enabled": True, "keys": [key]})
    return ring, hash_key("sk")


arrivals = st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=1, max_size=150).map(
    lambda gaps: [sum(gaps[: i + 1]) for i in range(len(gaps))])


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 60), times=arrivals)
def test_request_limiter_never_admits_more_than_its_limit_in_any_window(rpm, times):
    ring, digest = _ring(rpm=rpm)
    admitted = [t for t in times if ring.check(digest, t) is None]
    # A bucket of `rpm` refilled at rpm/60 per second: any window [t_i, t_j] holds at most the burst
    # plus what refilled in it (a full minute: at most 2 x rpm, then rpm per further minute).
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rpm + rpm * (admitted[j] - admitted[i]) / 60.0 + 1e-9, (rpm, admitted[i:j + 1])
    # And it does admit: the first request, and every one arriving at least 60/rpm s after the previous one.
    assert admitted and admitted[0] == times[0]


@settings(max_examples=100, deadline=None)
@given(rpm=st.integers(1, 30), times=arrivals)
@example(rpm=1, times=[4.18393462464373, 4.18393462464373])  # (t + 60) - t < 60 in floats: refilled to 0.99999...
def test_denial_retry_after_is_honest(rpm, times):
    ring, digest = _ring(rpm=rpm)
    for t in times:
        denied = ring.check(digest, t)
        if denied is not None:
            assert denied.status == 429 and denied.retry_after_s >= 1
            assert ring.check(digest, t + denied.retry_after_s) is None  # admitted once the wait is over
            return


@settings(max_examples=150, deadline=None)
@given(tpm=st.integers(10, 2000), requests=st.lists(
    st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.integers(1, 500)), min_size=1, max_size=100))
def test_token_limiter_never_admits_past_its_budget_in_any_window(tpm, requests):
    ring, digest = _ring(tpm=tpm)
    t, admitted = 0.0, []
    for gap, tokens in requests:
        t += gap
        if ring.check(digest, t) is None:
            admitted.append((t, tokens))
            ring.charge_tokens(digest, tokens, t)
    # A request is admitted only with a positive balance: the tokens of requests admitted in
    # [t_i, t_j) stay under the budget plus its refill (the last admitted one may overdraw).
    for i in range(len(admitted)):
        spent = 0
        for j in range(i + 1, len(admitted)):
            spent += admitted[j - 1][1]
            assert spent < tpm + tpm * (admitted[j][0] - admitted[i][0]) / 60.0 + 1e-6, (tpm, admitted[i:j + 1])


@pytest.mark.parametrize("rpm", [1, 7, 60])
def test_request_limiter_admits_a_stream_at_its_rate(rpm):
    ring, digest = _ring(rpm=rpm)
    times = [i * 60.0 / rpm for i in range(3 * rpm)]
    assert all(ring.check(digest, t) is None for t in times)
