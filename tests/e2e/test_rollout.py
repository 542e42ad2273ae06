"""Staged rollouts on the real fleet: Prometheus gates, golden-set quality gate, local actuator.

Bake times are short through the rollout spec itself (no test-only code paths).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from corral.cluster.spec.rollout import MetricGate, QualityGate, RolloutSpec, RolloutStep, default_gates
from corral.rollout.actuators import LocalServeActuator
from corral.rollout.controller import Controller, start_rollout
from corral.rollout.metrics import PrometheusMetricSource
from corral.rollout.quality import GoldenSetRunner, load_golden, resolve_golden_path
from corral.rollout.store import FileStore
from corral.serving.prometheus import PrometheusClient

HERE = Path(__file__).parent
# Short intervals, but patience for evidence: a new arm's first series reach Prometheus only after Ray's
# metrics export and two scrapes (~20 s on a busy CI machine); until then analyses are inconclusive.
FAST = dict(analysis_interval_s=3, analysis_window_s=30, min_window_s=3, min_sample_requests=3, failure_limit=1,
            error_limit=1, inconclusive_limit=40)


def _gates() -> list[MetricGate]:
    error_rate = next(g for g in default_gates() if g.name == "error_rate")
    # TP=2 on two shared cores is slower than TP=1 (its TTFT p95 at 100% reached 5.8x the baseline's
    # reference in one run on this machine); bound TTFT loosely, errors strictly. The gate's ratio logic is
    # unit-tested; here it must judge real Prometheus numbers, and not flake on the hardware.
    ttft = MetricGate(name="ttft_p95", query=next(g for g in default_gates() if g.name == "ttft_p95").query,
                      compare="ratio", max=10.0, floor=0.05)
    return [error_rate, ttft]


class Load:
    """Steady streaming traffic on a route from a background thread (bounded)."""

    def __init__(self, url: str, route: str):
        self.url, self.route, self.codes = url, route, Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set() and i < 5000:
            body = {"model": self.route, "prompt": "Hello", "max_tokens": 2, "stream": True, "user": f"u{i}"}
            try:
                r = requests.post(f"{self.url}/v1/completions", json=body, timeout=60)
                _ = r.content
                self.codes[r.status_code] += 1
            except requests.RequestException as exc:
                self.codes[type(exc).__name__] += 1
            i += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


@pytest.fixture
def actuator(fleet):
    act = LocalServeActuator(fleet.name)
    yield act
    # Leave the routes as the fleet file has them for the other tests.
    act.set_weights("tiny", {"tiny-random": 100, "tiny-random-tp2": 0})
    act.set_weights("llama", {"smollm2": 50, "tiny-random": 50})
    for arm in ("smollm2", "tiny-random", "tiny-random-tp2"):
        act.set_replica_floor(arm, None)


def _weight_changes(doc) -> list[int]:
    """The candidate's weight each time it changed, from the durable event history."""
    seq: list[int] = []
    for e in doc.events:
        w = e.weights.get("tiny-random-tp2")
        if w is not None and (not seq or seq[-1] != w):
            seq.append(w)
    return seq


def test_good_candidate_promoted_through_steps_survives_controller_kill(fleet, fleet_url, prometheus_url, actuator, tmp_path):
    """(a) promoted 50 -> 70 -> 90 -> 100 under load with zero failed requests, and
    (d) the controller SIGKILLed mid-step resumes: no step repeated or skipped."""
    actuator.set_weights("tiny", {"tiny-random": 100, "tiny-random-tp2": 0})
    spec = RolloutSpec(route="tiny", baseline="tiny-random", candidate="tiny-random-tp2",
                       steps=[RolloutStep(weight=w, bake_s=6, min_requests=3) for w in (50, 70, 90, 100)],
                       gates=_gates(), quality=QualityGate(enabled=False), **FAST)
    store = FileStore(tmp_path / "rollout.json")
    start_rollout(store, spec, time.time())
    cmd = [sys.executable, str(HERE / "rollout_controller.py"), str(store.path), prometheus_url, fleet.name]
    with Load(fleet_url, "tiny") as load:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (store.load().state.step < 1 or proc.poll() is not None):
            time.sleep(0.5)
        assert store.load().state.step == 1, store.load().events
        os.kill(proc.pid, signal.SIGKILL)  # mid-step: weights at 70, bake running
        proc.wait()
        time.sleep(2)
        restarted = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    doc = store.load()
    assert restarted.stdout.strip() == "Succeeded", (restarted.stdout, restarted.stderr[-2000:], doc.events)
    assert _weight_changes(doc) == [50, 70, 90, 100]  # once each: nothing repeated or skipped
    assert actuator.configured_weights("tiny") == {"tiny-random": 0, "tiny-random-tp2": 100}
    assert load.codes and set(load.codes) == {200}, load.codes


def test_bad_candidate_rolled_back_by_quality_gate(fleet, fleet_url, prometheus_url, actuator, tmp_path):
    """(b) the random-weight arm as candidate: the golden set fails it before it gets traffic."""
    actuator.set_weights("llama", {"smollm2": 100, "tiny-random": 0})
    spec = RolloutSpec(route="llama", baseline="smollm2", candidate="tiny-random",
                       steps=[RolloutStep(weight=w, bake_s=6, min_requests=3) for w in (50, 100)],
                       gates=_gates(), quality=QualityGate(enabled=True, min_score=0.3), **{**FAST, "analysis_interval_s": 30})
    store = FileStore(tmp_path / "rollout.json")
    start_rollout(store, spec, time.time())
    runner = GoldenSetRunner(fleet_url, load_golden(resolve_golden_path("builtin:llama_basic")))
    controller = Controller(spec, {"smollm2": 1, "tiny-random": 1}, PrometheusMetricSource(PrometheusClient(prometheus_url)),
                            actuator, store, quality_runner=runner)
    controller.tick_s = 1
    state = controller.run(max_ticks=120)
    assert state.phase.value == "RolledBack", store.load().events
    # Rolled back by the golden set before any weight moved to it (how long that run takes
    # depends on the CPU the two arms share, so the check is on events, not wall time).
    events = store.load().events
    ops = [e.operator for e in events]
    assert "set_weights" not in ops[:ops.index("rollback")], ops
    assert "quality" in events[ops.index("rollback")].reason, events
    assert actuator.configured_weights("llama") == {"smollm2": 100, "tiny-random": 0}
    scores = runner.last_replies
    assert scores, "the golden set ran against both arms"


def test_prometheus_down_pauses_and_never_promotes(fleet, fleet_url, prometheus_url, actuator, tmp_path):
    """(c) the metric source disappears mid-rollout: Error, then Paused, weights unchanged."""
    from corral.serving.local import LocalCluster
    from corral.serving.prometheus import LocalPrometheus

    prom = LocalPrometheus(LocalCluster().home / "prometheus")
    actuator.set_weights("tiny", {"tiny-random": 100, "tiny-random-tp2": 0})
    spec = RolloutSpec(route="tiny", baseline="tiny-random", candidate="tiny-random-tp2",
                       steps=[RolloutStep(weight=w, bake_s=20, min_requests=3) for w in (50, 100)],
                       gates=_gates(), quality=QualityGate(enabled=False), **FAST)
    store = FileStore(tmp_path / "rollout.json")
    start_rollout(store, spec, time.time())
    controller = Controller(spec, {"tiny-random": 1, "tiny-random-tp2": 1},
                            PrometheusMetricSource(PrometheusClient(prometheus_url)), actuator, store)
    try:
        with Load(fleet_url, "tiny"):
            for _ in range(60):
                controller.tick()
                if store.load().state.desired_weights.get("tiny-random-tp2") == 50:
                    break
                time.sleep(1)
            assert actuator.configured_weights("tiny") == {"tiny-random": 50, "tiny-random-tp2": 50}
            prom.stop()
            phases = []
            for _ in range(30):
                controller.tick()
                phases.append(store.load().state.phase.value)
                if phases[-1] == "Paused":
                    break
                time.sleep(1)
    finally:
        # After the load stops: a restart replays Prometheus's WAL and checkpoint first, which took
        # 3 min with the load running on 2 cores and a day of data (2.5 s on the idle machine).
        prom.start(timeout_s=600)
    assert "Error" in phases and phases[-1] == "Paused", phases
    assert actuator.configured_weights("tiny") == {"tiny-random": 50, "tiny-random-tp2": 50}  # never promoted

