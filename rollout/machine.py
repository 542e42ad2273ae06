"""The staged-rollout state machine: `decide(snapshot, spec, state, now)`.

Pure: no I/O, no clock. The controller (rollout/controller.py) gathers a `Snapshot`
(observed weights and readiness, metric readings when `needs()` asks for an analysis,
golden-set scores when it asks for a quality run, operator commands), calls `decide`,
persists the new state and then makes the world match the state's *intent*
(`desired_weights`, `replica_floors`). Because intent is absolute and persisted before
actuation, a restarted controller re-applies the same values (a no-op when they already
hold): no step is repeated or skipped and no weight changes twice.

Phases (Argo Rollouts / Flagger semantics):

    Pending -> Progressing(step, stage) -> Succeeded
                 |  ^         |
      (error)    v  | (ok)    +--> RolledBack   (gate failed past failure_limit, quality failed, abort)
               Error --------> Paused           (error_limit exceeded, too little evidence,
                                                 warm-up timeout, operator pause; resume continues)

Within Progressing each step goes through stages: capacity (raise the candidate's replica
floor and wait for warm replicas) -> quality (golden set, when required) -> shifting (new
weights written, waiting to see them in effect) -> baking (analyses every
`analysis_interval_s`; promotion once `bake_s` has passed, the latest analysis passed and
each arm with traffic served `min_requests`).

With `shadow.percent` > 0 the first step has one more stage between quality and shifting:
shadow (users stay on the baseline at 100%; the ingress copies `percent`% of the route's
requests to the candidate and discards its answers). Once the ingress runs the shadow setting,
analyses run every `analysis_interval_s` with the gates reading the candidate's shadow series;
a failing gate rolls back as in a step (the candidate never served a user), and after
`shadow.duration_s`, with the latest analysis passed and `shadow.min_requests` on each arm, the
shadow ends and step 1's weights are written. Gates on user feedback are left out of shadow
analyses: no user sees the candidate's answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.cluster.spec.rollout import MetricGate, RolloutSpec, needed_replicas
from corral.rollout.gates import GateResult, MetricReadings, Verdict, evaluate_gate
from corral.rollout.sequential import bernoulli_sample, evaluate_sequential, evaluate_sequential_readings


class Phase(str, Enum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    ERROR = "Error"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"


TERMINAL = (Phase.SUCCEEDED, Phase.ROLLED_BACK)
ACTIVE = (Phase.PROGRESSING, Phase.ERROR)


class Stage(str, Enum):
    CAPACITY = "capacity"
    QUALITY = "quality"
    SHADOW = "shadow"
    SHIFTING = "shifting"
    BAKING = "baking"


class Operator(str, Enum):
    HOLD = "hold"
    START = "start"
    SCALE = "scale"            # replica floor raised for the next share
    RUN_QUALITY = "run_quality"
    SET_WEIGHTS = "set_weights"
    SHADOW = "shadow"          # shadow copies to the candidate switched on
    ANALYSIS = "analysis"      # an analysis ran (result in the decision's gates)
    PROMOTE = "promote"        # next step
    PAUSE = "pause"
    RESUME = "resume"
    ERROR = "error"
    ROLLBACK = "rollback"
    SUCCEED = "succeed"


CommandOp = Literal["pause", "resume", "promote", "abort"]


@dataclass(frozen=True)
class Command:
    """An operator request queued in the store (by `corral rollout pause` etc.)."""

    seq: int
    op: CommandOp
    full: bool = False
    """For promote: go straight to the last step."""
    reason: str = ""


@dataclass(frozen=True)
class QualityScores:
    """Golden-set scores per arm in [0, 1], or why the run could not happen."""

    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    prompts: int = 0
    """Golden prompts each arm was scored on (the sample size behind a score)."""


@dataclass(frozen=True)
class Snapshot:
    """What the controller observed this tick."""

    weights: dict[str, int] | None
    """The route's weights in effect (None: the actuator could not read them)."""
    ready_replicas: dict[str, int]
    """Ready (warm, health-checked) replicas per arm."""
    max_replicas: dict[str, int]
    """Each arm's `replicas.max` from the fleet spec."""
    metrics: MetricReadings | None = None
    """Set when `needs().metrics` was true and the source answered."""
    metrics_error: str | None = None
    """Set when `needs().metrics` was true and the source failed."""
    quality: QualityScores | None = None
    """Set when `needs().quality` was true."""
    commands: tuple[Command, ...] = ()
    deployment_status: dict[str, str] | None = None
    """Serve's deployment status per arm (HEALTHY, UPDATING, UNHEALTHY, DEPLOY_FAILED, ...; "" if
    Serve lists none); None when it could not be read (then no arm is judged dead)."""
    shadow: dict[str, Any] | None = None
    """The route's shadow setting the ingress runs ({} = none); None when not read or not known
    (the ingress is applying a change)."""


class RolloutState(BaseModel):
    """Everything the rollout remembers; persisted after every decision (JSON)."""

    model_config = ConfigDict(extra="forbid")

    phase: Phase = Phase.PENDING
    step: int = 0
    """Index into spec.steps."""
    stage: Stage = Stage.CAPACITY
    stage_since: float | None = None
    """When the current stage began (warm-up timeout)."""
    started_at: float | None = None
    step_started_at: float | None = None
    """When the current step's weights were observed in effect (bake time counts from here)."""
    original_weights: dict[str, int] = Field(default_factory=dict)
    desired_weights: dict[str, int] = Field(default_factory=dict)
    """Intent: the route weights the actuator must make true."""
    replica_floors: dict[str, int] = Field(default_factory=dict)
    """Intent: minimum replicas per arm the autoscaler must keep (empty = fleet's own min)."""
    shadow: dict[str, Any] = Field(default_factory=dict)
    """Intent: the route's shadow setting the ingress must run ({arm, percent, max_in_flight,
    timeout_s}; empty = no shadow copies)."""
    shadow_done: bool = False
    """The shadow stage has ended (passed, or skipped by the operator)."""
    baseline_replicas: int = 0
    """Baseline's ready replicas when the rollout started (sizes the candidate's floor)."""
    last_analysis_at: float | None = None
    passed_in_step: bool = False
    """The latest analysis of this step passed with enough evidence."""
    failures: int = 0
    inconclusive: int = 0
    errors: int = 0
    quality_passed_steps: list[int] = Field(default_factory=list)
    quality_scores: dict[str, float] = Field(default_factory=dict)
    quality_prompts: int = 0
    """Golden prompts behind `quality_scores` (0: not known)."""
    baseline_reference: dict[str, float] = Field(default_factory=dict)
    """Last baseline value per gate, used at 100% when the baseline has no traffic."""
    baseline_samples: dict[str, list[float]] = Field(default_factory=dict)
    """Sequential gates: the largest baseline [n, mean, variance] per gate seen in a passing
    analysis, used when the current step has less of the baseline (90%, 100%)."""
    last_gates: list[dict[str, Any]] = Field(default_factory=list)
    last_command_seq: int = 0
    arms_down_since: dict[str, float] = Field(default_factory=dict)
    """When each arm was first seen down (see `_arm_down`) and not up since."""
    pause_reason: str | None = None
    reason: str = ""
    """Why the latest decision was taken."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


@dataclass(frozen=True)
class Decision:
    operator: Operator
    reason: str
    gates: tuple[GateResult, ...] = ()


@dataclass(frozen=True)
class Needs:
    """What the controller must measure before calling `decide` this tick."""

    metrics: bool
    quality: bool
    window_s: float
    """PromQL range for gates: this step's age, clamped to [min_window_s, analysis_window_s]."""
    elapsed_s: float
    """Time since this step's weights took effect (for request counts)."""
    shadow: bool = False
    """The analysis is of the shadow stage: gates read the candidate's shadow series."""


def needs(state: RolloutState, spec: RolloutSpec, now: float) -> Needs:
    active = state.phase in ACTIVE
    elapsed = max(0.0, now - state.step_started_at) if state.step_started_at is not None else 0.0
    window = min(max(elapsed, spec.min_window_s), spec.analysis_window_s)
    due = False
    if active and state.stage in (Stage.BAKING, Stage.SHADOW) and state.step_started_at is not None:
        last = state.last_analysis_at if state.last_analysis_at is not None else state.step_started_at
        due = now - last >= spec.analysis_interval_s
    return Needs(metrics=due, quality=active and state.stage == Stage.QUALITY,
                 window_s=window, elapsed_s=max(elapsed, 1.0), shadow=state.stage == Stage.SHADOW)


def shadow_setting(spec: RolloutSpec) -> dict[str, Any]:
    """What the ingress runs during the shadow stage (serving/shadow.py `ShadowRoute`)."""
    sh = spec.shadow
    return {"arm": spec.candidate, "percent": sh.percent, "max_in_flight": sh.max_in_flight, "timeout_s": sh.timeout_s}


def step_weights(spec: RolloutSpec, weight: int) -> dict[str, int]:
    return {spec.baseline: 100 - weight, spec.candidate: weight}


def decide(snapshot: Snapshot, spec: RolloutSpec, state: RolloutState, now: float) -> tuple[Decision, RolloutState]:
    """One step of the state machine. Never mutates `state`."""
    s = state.model_copy(deep=True)
    decision = _commands(snapshot, spec, s, now)
    if decision is None:
        decision = _advance(snapshot, spec, s, now)
    s.reason = decision.reason
    return decision, s


# -- commands ----------------------------------------------------------------------------


def _commands(snap: Snapshot, spec: RolloutSpec, s: RolloutState, now: float) -> Decision | None:
    decision = None
    for cmd in sorted(snap.commands, key=lambda c: c.seq):
        if cmd.seq <= s.last_command_seq:
            continue  # already handled before a restart
        s.last_command_seq = cmd.seq
        why = f" ({cmd.reason})" if cmd.reason else ""
        if s.terminal:
            decision = Decision(Operator.HOLD, f"ignored {cmd.op}: rollout already {s.phase.value}")
        elif cmd.op == "abort":
            decision = _rollback(spec, s, f"aborted by operator{why}")
        elif cmd.op == "pause":
            if s.phase == Phase.PAUSED:
                decision = Decision(Operator.HOLD, "already paused")
            else:
                decision = _pause(s, f"paused by operator{why}")
        elif cmd.op == "resume":
            if s.phase != Phase.PAUSED:
                decision = Decision(Operator.HOLD, f"ignored resume: rollout is {s.phase.value}, not Paused")
            else:
                s.phase = Phase.PROGRESSING if s.started_at is not None else Phase.PENDING
                s.pause_reason = None
                s.inconclusive = s.errors = 0
                s.stage_since = now  # a fresh warm-up timeout if we were waiting for capacity
                decision = Decision(Operator.RESUME, f"resumed by operator{why}")
        elif cmd.op == "promote":
            if s.phase == Phase.PENDING:
                decision = Decision(Operator.HOLD, "ignored promote: rollout has not started")
            elif s.stage == Stage.SHADOW and not cmd.full:
                s.phase, s.pause_reason = Phase.PROGRESSING, None
                s.shadow, s.shadow_done = {}, True
                decision = _shift(spec, s, now, f"shadow stage ended by operator{why}")
            else:
                target = len(spec.steps) - 1 if cmd.full else s.step + 1
                s.phase, s.pause_reason = Phase.PROGRESSING, None
                s.shadow, s.shadow_done = {}, True
                if target >= len(spec.steps) or (cmd.full and s.step == target and s.stage == Stage.BAKING):
                    decision = _succeed(spec, s, f"promoted to completion by operator{why}")
                else:
                    _enter_step(s, target, now)
                    decision = Decision(Operator.PROMOTE, f"promoted by operator to step {target + 1} "
                                                          f"(weight {spec.steps[target].weight}){why}")
    return decision


# -- the main progression ------------------------------------------------------------------


def _advance(snap: Snapshot, spec: RolloutSpec, s: RolloutState, now: float) -> Decision:
    if s.terminal:
        return Decision(Operator.HOLD, s.reason or f"rollout {s.phase.value}")
    dead = _dead_arms(snap, spec, s, now)
    if dead is not None:
        return dead
    if s.phase == Phase.PAUSED:
        return Decision(Operator.HOLD, f"paused: {s.pause_reason}")
    start = None
    if s.phase == Phase.PENDING:
        if snap.weights is None:
            return Decision(Operator.HOLD, "waiting to read the route's current weights")
        s.phase, s.started_at = Phase.PROGRESSING, now
        s.original_weights = dict(snap.weights)
        s.desired_weights = dict(snap.weights)
        s.baseline_replicas = snap.ready_replicas.get(spec.baseline, 0)
        _enter_step(s, 0, now)
        start = Decision(Operator.START, f"rollout started: {spec.baseline} -> {spec.candidate} on route {spec.route}")
    decision = _progress(snap, spec, s, now)
    if start is not None:
        return Decision(Operator.START, f"{start.reason}; {decision.reason}", decision.gates)
    return decision


def _progress(snap: Snapshot, spec: RolloutSpec, s: RolloutState, now: float) -> Decision:
    step = spec.steps[s.step]
    if s.stage == Stage.CAPACITY:
        need = needed_replicas(spec.capacity, step.weight, s.baseline_replicas,
                               snap.max_replicas.get(spec.candidate, 1))
        raised = s.replica_floors.get(spec.candidate) != need
        s.replica_floors = {**s.replica_floors, spec.candidate: need}
        ready = snap.ready_replicas.get(spec.candidate, 0)
        if ready < need:
            waited = now - (s.stage_since if s.stage_since is not None else now)
            if waited > spec.capacity.warmup_timeout_s:
                return _pause(s, f"candidate {spec.candidate!r} has {ready} of {need} ready replicas after "
                                 f"{waited:.0f}s (warmup_timeout_s={spec.capacity.warmup_timeout_s:g}); weights unchanged")
            op = Operator.SCALE if raised else Operator.HOLD
            return Decision(op, f"waiting for {need} warm replica(s) of {spec.candidate!r} before "
                                f"{step.weight}% ({ready} ready)")
        if spec.quality.enabled and s.step not in s.quality_passed_steps and (s.step == 0 or spec.quality.every_step):
            s.stage, s.stage_since = Stage.QUALITY, now
            return Decision(Operator.RUN_QUALITY, f"{ready} replica(s) of {spec.candidate!r} ready; running golden set")
        return _shadow_or_shift(spec, s, now, f"{ready} replica(s) of {spec.candidate!r} ready")

    if s.stage == Stage.QUALITY:
        q = snap.quality
        if q is None:
            return Decision(Operator.HOLD, "waiting for the golden-set run")
        if q.error is not None:
            return _error(spec, s, f"golden set could not run: {q.error}")
        s.phase, s.errors = Phase.PROGRESSING, 0
        s.quality_scores, s.quality_prompts = dict(q.scores), q.prompts
        cand, base = q.scores.get(spec.candidate), q.scores.get(spec.baseline)
        if cand is None or base is None:
            return _error(spec, s, f"golden set returned no score for {'candidate' if cand is None else 'baseline'}")
        scores = f"quality {spec.candidate}={cand:.2f}, {spec.baseline}={base:.2f}"
        if cand < spec.quality.min_score:
            return _rollback(spec, s, f"{scores}: candidate below min_score {spec.quality.min_score}")
        if cand < base - spec.quality.max_drop:
            return _rollback(spec, s, f"{scores}: candidate dropped more than max_drop {spec.quality.max_drop}")
        s.quality_passed_steps = sorted({*s.quality_passed_steps, s.step})
        return _shadow_or_shift(spec, s, now, f"{scores} passed")

    if s.stage == Stage.SHADOW:
        if s.step_started_at is None:
            if snap.shadow != s.shadow:
                return Decision(Operator.HOLD, f"waiting for the ingress to copy {spec.shadow.percent:g}% of "
                                               f"{spec.route!r} to {spec.candidate!r} (shadow)")
            s.step_started_at, s.last_analysis_at, s.passed_in_step, s.inconclusive = now, None, False, 0
            return Decision(Operator.HOLD, f"shadow in effect: {spec.shadow.percent:g}% of {spec.route!r} copied "
                                           f"to {spec.candidate!r}, users on {spec.baseline!r}")
        return _bake(snap, spec, s, now)

    if s.stage == Stage.SHIFTING:
        if snap.weights == s.desired_weights and snap.shadow in (None, s.shadow):
            s.stage, s.stage_since, s.step_started_at = Stage.BAKING, now, now
            s.last_analysis_at, s.passed_in_step, s.inconclusive = None, False, 0
            return Decision(Operator.HOLD, f"weights {_fmt(s.desired_weights)} in effect; baking step {s.step + 1}")
        return Decision(Operator.HOLD, f"waiting for weights {_fmt(s.desired_weights)} to take effect "
                                       f"(seen {_fmt(snap.weights) if snap.weights else 'unknown'})")

    return _bake(snap, spec, s, now)


def _bake(snap: Snapshot, spec: RolloutSpec, s: RolloutState, now: float) -> Decision:
    step = spec.steps[s.step]
    shadow = s.stage == Stage.SHADOW
    bake_s = spec.shadow.duration_s if shadow else step.bake_s
    analysis: Decision | None = None
    if snap.metrics_error is not None:
        s.last_analysis_at = now
        return _error(spec, s, f"metric source unavailable: {snap.metrics_error}")
    if snap.metrics is not None:
        s.last_analysis_at, s.errors, s.phase = now, 0, Phase.PROGRESSING
        analysis = _analyse(snap.metrics, spec, s, now)
        if s.phase != Phase.PROGRESSING:
            return analysis  # rolled back or paused
    baked = s.step_started_at is not None and now - s.step_started_at >= bake_s
    if baked and s.passed_in_step and shadow:
        s.shadow, s.shadow_done = {}, True
        return _shift(spec, s, now, f"shadow stage passed ({bake_s:g}s, all gates passing on the candidate's "
                                    f"shadow traffic); shadow off")
    if baked and s.passed_in_step:
        if s.step + 1 >= len(spec.steps):
            return _succeed(spec, s, f"final step baked {step.bake_s:g}s with all gates passing")
        nxt = s.step + 1
        _enter_step(s, nxt, now)
        decision = _progress(snap, spec, s, now)  # start capacity for the next share right away
        return Decision(Operator.PROMOTE, f"step {nxt} ({step.weight}%) passed; moving to step {nxt + 1} "
                                          f"({spec.steps[nxt].weight}%): {decision.reason}")
    if analysis is not None:
        return analysis
    left = bake_s - (now - s.step_started_at) if s.step_started_at is not None else bake_s
    what = (f"shadow stage ({spec.shadow.percent:g}% copied to {spec.candidate!r})" if shadow
            else f"baking step {s.step + 1} ({step.weight}%)")
    return Decision(Operator.HOLD, f"{what}: {max(0.0, left):.0f}s of bake left, latest analysis "
                                   f"{'passed' if s.passed_in_step else 'pending'}")


def _analyse(m: MetricReadings, spec: RolloutSpec, s: RolloutState, now: float) -> Decision:
    step = spec.steps[s.step]
    shadow = s.stage == Stage.SHADOW
    min_requests = spec.shadow.min_requests if shadow else step.min_requests
    bake_s = spec.shadow.duration_s if shadow else step.bake_s
    baseline_live = s.desired_weights.get(spec.baseline, 0) > 0
    results = []
    for gate in spec.gates:
        if shadow and gate.reads_user_feedback:
            continue  # no user sees the candidate's shadow answers, so none rates them
        if gate.test == "sequential":
            # The baseline does not change during a rollout: compare with the largest sample of it
            # seen in any step (at 90% it gets a tenth of the traffic, at 100% none).
            samples = m.samples.get(gate.name, {})
            base_s = samples.get(spec.baseline) if baseline_live else None
            kept = s.baseline_samples.get(gate.name)
            if kept is not None and (base_s is None or kept[0] > base_s[0]):
                base_s = kept
            results.append(evaluate_sequential_readings(gate, samples.get(spec.candidate), base_s))
            continue
        values = m.values.get(gate.name, {})
        cand = values.get(spec.candidate)
        base = values.get(spec.baseline) if baseline_live else s.baseline_reference.get(gate.name)
        results.append(evaluate_gate(gate, cand, base))
    golden = _shadow_golden(m, spec, s) if shadow else None
    if golden is not None:
        results.append(golden)
    s.last_gates = [r.to_dict() for r in results]
    # In the shadow stage the candidate's requests are its shadow copies (MetricReadings.requests).
    live = [a for a in (spec.baseline, spec.candidate) if shadow or s.desired_weights.get(a, 0) > 0]
    served = {a: m.requests.get(a, 0.0) for a in live}
    sample_ok = all(v >= spec.min_sample_requests for v in served.values())
    evidence_ok = all(v >= min_requests for v in served.values())
    failed = [r for r in results if r.verdict == Verdict.FAIL]
    counts = ", ".join(f"{a}={v:.0f}" for a, v in served.items())
    gates = tuple(results)

    if failed and sample_ok:
        s.failures += 1
        s.passed_in_step = False
        why = "; ".join(f"{r.gate}: {r.message}" for r in failed)
        if s.failures > spec.failure_limit:
            return _rollback(spec, s, f"gate failed ({s.failures} failures > failure_limit {spec.failure_limit}): {why}", gates)
        return Decision(Operator.ANALYSIS, f"gate failed ({s.failures} of {spec.failure_limit} tolerated): {why}", gates)

    if failed or not evidence_ok or any(r.verdict == Verdict.INCONCLUSIVE and not r.advisory for r in results):
        s.passed_in_step = False
        missing = [r.gate for r in results if r.verdict != Verdict.PASS and not r.advisory]
        why = (f"requests this {'shadow stage' if shadow else 'step'} {counts} (need {min_requests}" +
               (f", {spec.min_sample_requests} to judge gates" if failed else "") + ")")
        if missing:
            why += f"; not conclusive: {missing}"
        baked = s.step_started_at is not None and now - s.step_started_at >= bake_s
        if baked:
            s.inconclusive += 1
            if s.inconclusive > spec.inconclusive_limit:
                return _pause(s, f"not enough evidence after {s.inconclusive} analyses past the bake time: {why}", gates)
        return Decision(Operator.ANALYSIS, f"inconclusive: {why}", gates)

    s.passed_in_step, s.inconclusive = True, 0
    if baseline_live:
        for r in results:
            if r.baseline is not None and r.test != "sequential":
                s.baseline_reference[r.gate] = r.baseline
        for gate in spec.gates:
            base_s = m.samples.get(gate.name, {}).get(spec.baseline)
            kept = s.baseline_samples.get(gate.name)
            if gate.test == "sequential" and base_s is not None and (kept is None or base_s[0] >= kept[0]):
                s.baseline_samples[gate.name] = list(base_s)
    return Decision(Operator.ANALYSIS, f"all gates passed (requests {counts})", gates)


SHADOW_GOLDEN_DESIGN_N = 100
"""Scored shadow answers at which the golden-subset check's confidence sequence is narrowest."""


def _shadow_golden(m: MetricReadings, spec: RolloutSpec, s: RolloutState) -> GateResult | None:
    """The shadow stage's golden-subset check: the candidate's pass rate on golden prompts in user
    traffic (its shadow answers) against the baseline's golden-set score, as a sequential
    `quality_pass_rate` comparison with margin `quality.max_drop`. Advisory: a FAIL counts like a
    gate's, too few golden prompts never hold the stage. None when it cannot be judged (off, no
    golden-set score for the baseline, not measured)."""
    base = s.quality_scores.get(spec.baseline)
    if not spec.shadow.golden or m.shadow_golden is None or base is None or s.quality_prompts <= 0:
        return None
    passed, scored = m.shadow_golden
    gate = MetricGate(name="shadow_golden", test="sequential", metric="quality_pass_rate",
                      margin=max(spec.quality.max_drop, 1e-3), alpha=spec.shadow.golden_alpha,
                      design_n=SHADOW_GOLDEN_DESIGN_N)
    n = s.quality_prompts
    result = evaluate_sequential(gate, bernoulli_sample(passed, scored), bernoulli_sample(base * n, n))
    return replace(result, advisory=True)


# -- dead arms -------------------------------------------------------------------------------

DEAD_STATUSES = ("UNHEALTHY", "DEPLOY_FAILED")


def _arm_down(snap: Snapshot, s: RolloutState, arm: str) -> str | None:
    """Why `arm` is not serving now, or None. Zero replicas only count while it has traffic."""
    status = (snap.deployment_status or {}).get(arm, "")
    if status in DEAD_STATUSES:
        return f"deployment {status}"
    if s.desired_weights.get(arm, 0) > 0 and snap.ready_replicas.get(arm, 0) == 0:
        return f"zero running replicas at weight {s.desired_weights[arm]}%"
    return None


def _dead_arms(snap: Snapshot, spec: RolloutSpec, s: RolloutState, now: float) -> Decision | None:
    """A candidate down past `capacity.dead_after_s` rolls back; a baseline down that long pauses."""
    if snap.deployment_status is None or s.started_at is None:
        return None  # status unknown this tick: neither start nor clear a down period
    down = {}
    for arm in (spec.baseline, spec.candidate):
        why = _arm_down(snap, s, arm)
        if why is None:
            s.arms_down_since.pop(arm, None)
        else:
            since = s.arms_down_since.setdefault(arm, now)
            if now - since > spec.capacity.dead_after_s:
                down[arm] = f"{why} for {now - since:.0f}s (dead_after_s={spec.capacity.dead_after_s:g})"
    if spec.candidate in down and s.phase in (*ACTIVE, Phase.PAUSED):
        return _rollback(spec, s, f"candidate {spec.candidate!r} is dead: {down[spec.candidate]}")
    if spec.baseline in down and s.phase in ACTIVE:
        return _pause(s, f"baseline {spec.baseline!r} is dead: {down[spec.baseline]}; weights held")
    return None


# -- transitions ----------------------------------------------------------------------------


def _enter_step(s: RolloutState, index: int, now: float) -> None:
    s.step, s.stage, s.stage_since = index, Stage.CAPACITY, now
    s.step_started_at = s.last_analysis_at = None
    s.passed_in_step, s.inconclusive = False, 0


def _shadow_or_shift(spec: RolloutSpec, s: RolloutState, now: float, why: str) -> Decision:
    """Before the first step's weights: the shadow stage, when configured and not yet done."""
    if s.step == 0 and spec.shadow.enabled and not s.shadow_done:
        s.shadow = shadow_setting(spec)
        s.stage, s.stage_since = Stage.SHADOW, now
        s.step_started_at = s.last_analysis_at = None
        s.passed_in_step, s.inconclusive = False, 0
        return Decision(Operator.SHADOW, f"{why}; shadow stage: copying {spec.shadow.percent:g}% of "
                                         f"{spec.route!r} to {spec.candidate!r} for {spec.shadow.duration_s:g}s, "
                                         f"users stay on {spec.baseline!r}")
    return _shift(spec, s, now, why)


def _shift(spec: RolloutSpec, s: RolloutState, now: float, why: str) -> Decision:
    weights = step_weights(spec, spec.steps[s.step].weight)
    s.desired_weights = weights
    s.stage, s.stage_since = Stage.SHIFTING, now
    return Decision(Operator.SET_WEIGHTS, f"{why}; setting weights {_fmt(weights)}")


def _pause(s: RolloutState, why: str, gates: tuple[GateResult, ...] = ()) -> Decision:
    s.phase, s.pause_reason = Phase.PAUSED, why
    return Decision(Operator.PAUSE, why, gates)


def _error(spec: RolloutSpec, s: RolloutState, why: str) -> Decision:
    s.errors += 1
    s.passed_in_step = False  # never promote on stale evidence
    if s.errors > spec.error_limit:
        return _pause(s, f"{why} ({s.errors} consecutive errors > error_limit {spec.error_limit})")
    s.phase = Phase.ERROR
    return Decision(Operator.ERROR, f"{why} ({s.errors} of {spec.error_limit} tolerated); weights held")


def _rollback(spec: RolloutSpec, s: RolloutState, why: str, gates: tuple[GateResult, ...] = ()) -> Decision:
    s.phase = Phase.ROLLED_BACK
    s.desired_weights = {spec.baseline: 100, spec.candidate: 0}
    s.replica_floors = {}
    s.shadow = {}
    s.pause_reason = None
    return Decision(Operator.ROLLBACK, f"rolled back: {why}", gates)


def _succeed(spec: RolloutSpec, s: RolloutState, why: str) -> Decision:
    s.phase = Phase.SUCCEEDED
    s.step = len(spec.steps) - 1
    s.desired_weights = {spec.baseline: 0, spec.candidate: 100}
    s.replica_floors = {}
    s.shadow = {}
    return Decision(Operator.SUCCEED, f"succeeded: {why}")


def _fmt(weights: dict[str, int] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((weights or {}).items()))
