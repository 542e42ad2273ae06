"""The rollout controller: snapshot -> decide -> persist -> actuate, once per tick.

Restart safety: the decision's new state (with its *intent*: desired weights, replica
floors) is persisted before anything is actuated, and actuation is absolute and
idempotent. A controller killed at any point and started again loads the state, sees the
same step, the same bake start and the same intent; re-applying the intent is a no-op if
it had already landed. Operator commands (pause/resume/promote/abort) are queued in the
store by the CLI and consumed here by sequence number, so each is handled exactly once.

Everything at the edge is injected, so end-to-end tests can pass the real Prometheus
source, the real actuator, a file store and `time.time`, or fakes with a fake clock.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Protocol

from corral.cluster.spec.rollout import RolloutSpec
from corral.rollout.actuators import Actuator, ActuatorError
from corral.rollout.machine import (
    Decision,
    Operator,
    QualityScores,
    RolloutState,
    Snapshot,
    decide,
    needs,
)
from corral.rollout.metrics import MetricSource, MetricSourceError
from corral.rollout.store import Event, RolloutDoc, RolloutStore


class QualityRunner(Protocol):
    def run(self, arms: list[str]) -> QualityScores:
        """Score each arm on the golden set (error set if the run could not happen)."""
        ...


class RolloutConflict(RuntimeError):
    """A rollout is already active in this store."""


def start_rollout(store: RolloutStore, spec: RolloutSpec, now: float, force: bool = False) -> RolloutDoc:
    """Create a new rollout document (refuses while another one is active, unless forced)."""

    def create(doc: RolloutDoc | None) -> RolloutDoc:
        if doc is not None and not doc.state.terminal and not force:
            raise RolloutConflict(f"rollout {doc.id} is still {doc.state.phase.value}; abort it first")
        new = RolloutDoc(id=uuid.uuid4().hex[:8], created_at=now, spec=spec.model_dump(mode="json"))
        new.add_event(Event(at=now, operator="create", reason=f"rollout of route {spec.route}: "
                            f"{spec.baseline} -> {spec.candidate}", phase=new.state.phase.value, step=0))
        return new

    return store.update(create)


def enqueue_command(store: RolloutStore, op: str, now: float, full: bool = False, reason: str = "") -> int:
    seq: list[int] = []

    def add(doc: RolloutDoc | None) -> RolloutDoc:
        if doc is None:
            raise LookupError("no rollout in the store; start one first")
        seq.append(doc.enqueue(op, full=full, reason=reason, at=now))
        return doc

    store.update(add)
    return seq[0]


class Controller:
    def __init__(self, spec: RolloutSpec, max_replicas: dict[str, int], metric_source: MetricSource,
                 actuator: Actuator, store: RolloutStore, clock: Callable[[], float] = time.time,
                 quality_runner: QualityRunner | None = None,
                 on_decision: Callable[[Decision, RolloutState], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None,
                 rollout_id: str | None = None, tick_s: float | None = None,
                 golden_rules: list[dict[str, Any]] | None = None):
        """`max_replicas`: each arm's `replicas.max` from the fleet spec (caps the replica floor).
        `rollout_id`: the stored rollout this controller drives (a tick refuses another one).
        `on_error` hears every actuator error a tick works around (weights or status unreadable).
        `golden_rules`: the golden set as `corral.rollout.quality.golden_rules` gives it; sent with
        the shadow setting (when `shadow.golden`) so the ingress scores the candidate's shadow
        answers to golden prompts. They are the controller's to add: the state's intent and the
        setting read back are compared without them."""
        self.spec, self.max_replicas = spec, dict(max_replicas)
        self.source, self.actuator, self.store, self.clock = metric_source, actuator, store, clock
        self.quality_runner = quality_runner
        self.on_decision, self.on_error = on_decision, on_error
        self.rollout_id = rollout_id
        self.golden_rules = list(golden_rules or []) if spec.shadow.golden else []
        self.tick_s = tick_s if tick_s is not None else max(0.5, min(5.0, spec.analysis_interval_s / 4))
        """Seconds between ticks (default: a quarter of the analysis interval, within [0.5, 5])."""

    def tick(self) -> Decision:
        doc = self.store.load()
        if doc is None:
            raise LookupError("no rollout in the store; start one first")
        if self.rollout_id is not None and doc.id != self.rollout_id:
            raise RolloutConflict(f"the store holds rollout {doc.id}, not {self.rollout_id}")
        now = self.clock()
        state = doc.state
        snap = self._observe(state, doc, now)
        decision, new_state = decide(snap, self.spec, state, now)

        def persist(current: RolloutDoc | None) -> RolloutDoc:
            if current is None or current.id != doc.id:
                raise RolloutConflict("the rollout was replaced while this controller was running")
            current.state = new_state
            last = current.events[-1] if current.events else None
            if decision.operator != Operator.HOLD or last is None or last.reason != decision.reason:
                current.add_event(Event(at=now, operator=decision.operator.value, reason=decision.reason,
                                        phase=new_state.phase.value, step=new_state.step,
                                        weights=new_state.desired_weights))
            # Commands at or below last_command_seq are handled; later ones arrived meanwhile.
            current.commands = [c for c in current.commands if c.seq > new_state.last_command_seq]
            return current

        self.store.update(persist)  # intent is durable before the fleet is touched
        self.reconcile(new_state)
        if self.on_decision is not None:
            self.on_decision(decision, new_state)
        return decision

    def _observe(self, state: RolloutState, doc: RolloutDoc, now: float) -> Snapshot:
        arms = [self.spec.baseline, self.spec.candidate]
        weights = ready = status = None
        try:
            weights = self.actuator.get_weights(self.spec.route)  # None while a change is being applied
        except ActuatorError as exc:
            self._report(exc)  # decide() holds while weights are unknown
        try:
            arm_status = self.actuator.arm_status(arms)
            ready = {a: st.ready for a, st in arm_status.items()}
            status = {a: st.status for a, st in arm_status.items()}
        except ActuatorError as exc:
            self._report(exc)  # no readiness, no dead-arm verdict this tick
        shadow = None
        if self.spec.shadow.enabled:
            try:
                shadow = self.actuator.get_shadow(self.spec.route)
                if shadow:
                    shadow = {k: v for k, v in shadow.items() if k != "golden"}
            except ActuatorError as exc:
                self._report(exc)  # decide() waits while the shadow setting is unknown
        n = needs(state, self.spec, now)
        metrics = metrics_error = quality = None
        if n.metrics:
            try:
                if n.shadow:  # the candidate's shadow series (only sources that know them get the flag)
                    metrics = self.source.collect(self.spec, n.window_s, n.elapsed_s, shadow=True)
                else:
                    metrics = self.source.collect(self.spec, n.window_s, n.elapsed_s)
            except MetricSourceError as exc:
                metrics_error = str(exc)
        if n.quality:
            if self.quality_runner is None:
                quality = QualityScores(error="no quality runner configured (quality.enabled is true)")
            else:
                quality = self.quality_runner.run(arms)
        return Snapshot(weights=weights, ready_replicas=ready or {}, max_replicas=self.max_replicas,
                        metrics=metrics, metrics_error=metrics_error, quality=quality,
                        commands=doc.pending_commands(), deployment_status=status, shadow=shadow)

    def _report(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(exc)

    def reconcile(self, state: RolloutState) -> None:
        """Make the fleet match the state's intent (idempotent; safe to repeat after a restart)."""
        if state.started_at is None:
            return
        for arm in (self.spec.baseline, self.spec.candidate):
            self.actuator.set_replica_floor(arm, state.replica_floors.get(arm))
        if self.spec.shadow.enabled:  # off (rollback, success, step 1) before the weights move
            setting = dict(state.shadow) if state.shadow else None
            if setting and self.golden_rules:
                setting["golden"] = self.golden_rules
            self.actuator.set_shadow(self.spec.route, setting)
        if state.desired_weights:
            self.actuator.set_weights(self.spec.route, state.desired_weights)

    def run(self, sleep: Callable[[float], None] = time.sleep, max_ticks: int | None = None) -> RolloutState:
        """Tick until the rollout is Succeeded or RolledBack (or `max_ticks`)."""
        ticks = 0
        while True:
            try:
                self.tick()
            except ActuatorError as exc:
                # The intent is persisted; the next tick re-applies it.
                self._report(exc)
            ticks += 1
            doc = self.store.load()
            if doc.state.terminal or (max_ticks is not None and ticks >= max_ticks):
                return doc.state
            sleep(self.tick_s)
