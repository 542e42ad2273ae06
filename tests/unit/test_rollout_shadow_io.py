"""The shadow stage at the rollout's edges: gate readings from the candidate's shadow series
(a fake Prometheus HTTP API holding user and shadow traffic), the A/B report and user gates not
counting shadow copies, the setting written into the Serve config's ingress user_config and read
back from Serve's status (the Serve REST stub), and the controller driving it all."""

from __future__ import annotations

import copy

import pytest
from promfake import FakePrometheus, Feedback, Req
from rollout_stubs import StubServe

from corral.cluster.spec import parse_fleet
from corral.cluster.spec.rollout import MetricGate, QualityGate, RolloutSpec, RolloutStep, ShadowSpec
from corral.rollout.ab_prometheus import collect
from corral.rollout.actuators import ActuatorError, InMemoryActuator, LocalServeActuator
from corral.rollout.controller import Controller, start_rollout
from corral.rollout.gates import MetricReadings
from corral.rollout.machine import Phase, Stage
from corral.rollout.metrics import PrometheusMetricSource
from corral.rollout.store import FileStore
from corral.serving.app import serve_config
from corral.serving.local import LocalCluster
from corral.serving.prometheus import PrometheusClient
from corral.serving.shadow import route_shadow, set_route_shadow

T0, T1 = 1_000_000.0, 1_000_600.0
B, C = "base", "cand"
GATES = [
    MetricGate(name="errors", query='sum(increase($requests{route="$route",arm="$arm",status=~"5.."}[$window]))',
               compare="absolute", max=1000.0),
    MetricGate(name="err_seq", test="sequential", metric="error_rate", margin=0.02),
    MetricGate(name="ttft_seq", test="sequential", metric="ttft", margin=1.3),
    MetricGate(name="satisfaction", test="sequential", metric="quality_pass_rate", margin=0.05),
]


def spec(**over) -> RolloutSpec:
    d = dict(route="llama", baseline=B, candidate=C, gates=GATES, quality=QualityGate(enabled=False),
             shadow=ShadowSpec(percent=50, duration_s=30, min_requests=10))
    d.update(over)
    return RolloutSpec(**d)


@pytest.fixture
def prom():
    """The baseline served 300 users (1% errors); the candidate answered 120 shadow copies
    (25% errors, TTFT 3x) and no user."""
    reqs = [Req(T0 + 1 + i, "llama", B, status=500 if i < 3 else 200, ttft=0.2) for i in range(300)]
    reqs += [Req(T0 + 1 + 4 * i, "llama", C, status=500 if i < 30 else 200, ttft=0.6, shadow=True) for i in range(120)]
    fb = [Feedback(T0 + 5, "llama", B, 1.0)]
    p = FakePrometheus(reqs, fb, replicas={f"LLMServer:{B}": 1, f"LLMServer:{C}": 1}, now=T1)
    yield p
    p.close()


def test_shadow_analysis_reads_the_candidates_shadow_series(prom):
    source = PrometheusMetricSource(PrometheusClient(prom.url))
    m = source.collect(spec(), window_s=600, elapsed_s=T1 - T0, shadow=True)
    assert m.requests == {B: 300, C: 120}
    assert m.values["errors"] == {B: 3, C: 30}
    assert m.samples["err_seq"][C][0] == 120 and m.samples["err_seq"][C][1] == pytest.approx(0.25)
    assert m.samples["ttft_seq"][C][0] == 120
    assert "satisfaction" not in m.samples  # nobody rates a shadow answer
    shadow_queries = [q for q in prom.queries if "ray_corral_shadow_" in q]
    assert shadow_queries and all(f'arm="{C}"' in q for q in shadow_queries)  # never the baseline's


def test_outside_the_shadow_stage_and_in_the_ab_report_shadow_copies_are_not_user_traffic(prom):
    m = PrometheusMetricSource(PrometheusClient(prom.url)).collect(spec(), 600, T1 - T0)
    assert m.requests == {B: 300, C: 0} and m.values["errors"][C] is None
    data = collect(PrometheusClient(prom.url), "llama", [B, C], T0, T1, {B: f"LLMServer:{B}", C: f"LLMServer:{C}"},
                   step_s=10)
    assert data[B].requests == 300 and data[C].requests == 0 and data[C].output_tokens == 0
    assert data[C].histograms["ttft"] == [] or max(c for _, c in data[C].histograms["ttft"]) == 0
    # The shadow copies have rows of their own, beside (not in) the user rows and the cost.
    assert data[C].shadow_requests == 120 and data[C].shadow_errors == 30 and data[B].shadow_requests == 0
    from corral.rollout.ab_prometheus import report

    rows = {r.metric: r for r in report(data, B, C, T1 - T0, gpu_hourly_usd=2.0, gpus_per_replica={B: 1, C: 1})}
    assert rows["requests"].estimates[C].value == 0 and rows["shadow_requests"].estimates[C].value == 120
    assert rows["shadow_error_rate"].estimates[C].value == pytest.approx(0.25)
    assert 0.55 < rows["shadow_ttft_p95_s"].estimates[C].value < 0.7  # every copy 0.6 s, within its bucket
    assert rows["ttft_p95_s"].estimates[C].value is None
    assert "shadow_golden_pass_rate" not in rows  # no golden prompt was copied


# -- the setting in Serve's config ---------------------------------------------------------------

FLEET = {
    "apiVersion": "corral/v1", "kind": "Fleet", "name": "demo",
    "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
    "arms": [{"name": n, "model": {"path": "/models/x"}, "replicas": {"min": 1, "max": 1}} for n in (B, C)],
    "routes": [{"name": "llama", "arms": [{"arm": B, "weight": 100}, {"arm": C, "weight": 0}]}],
}
SETTING = {"arm": C, "percent": 50.0, "max_in_flight": 4, "timeout_s": 120.0}


def app_config() -> dict:
    return serve_config(parse_fleet(FLEET, source="test"))["applications"][0]


def test_set_route_shadow_edits_only_the_ingress_user_config():
    app = app_config()
    args_before, routes_before = copy.deepcopy(app["args"]), app["deployments"][0]["user_config"]["routes"]
    assert set_route_shadow(app, "llama", SETTING) is True
    assert set_route_shadow(app, "llama", dict(SETTING)) is False  # idempotent
    assert route_shadow(app) == {"llama": SETTING}
    assert app["args"] == args_before  # never args: that would restart every replica
    assert app["deployments"][0]["user_config"]["routes"] == routes_before
    assert set_route_shadow(app, "llama", None) is True and route_shadow(app) == {}
    assert "shadow" not in app["deployments"][0]["user_config"]
    with pytest.raises(KeyError):
        set_route_shadow(app, "nope", SETTING)
    with pytest.raises(ValueError):
        set_route_shadow(app, "llama", {**SETTING, "arm": "ghost"})


def test_local_actuator_writes_the_shadow_through_serve_and_reads_what_the_ingress_runs():
    import ray.serve.schema  # noqa: F401  (the stub validates with it; a first import can outlast a 10 s read)

    stub = StubServe({"applications": [app_config()]})
    try:
        act = LocalServeActuator("demo", cluster=LocalCluster(dashboard_port=stub.port))
        assert act.get_shadow("llama") == {}
        assert act.set_shadow("llama", SETTING) is True and stub.puts == 1
        assert act.get_shadow("llama") == SETTING
        assert act.get_weights("llama") == {B: 100, C: 0}  # weights untouched
        assert act.set_shadow("llama", SETTING) is False and stub.puts == 1
        assert act.set_shadow("llama", None) is True and act.get_shadow("llama") == {}
        with pytest.raises(ActuatorError):
            act.set_shadow("llama", {**SETTING, "percent": 150})
    finally:
        stub.close()


# -- the controller --------------------------------------------------------------------------------

class Source:
    """Metric source that answers passing readings and records whether it was asked for shadow series."""

    def __init__(self):
        self.shadow_flags: list[bool] = []

    def collect(self, spec, window_s, elapsed_s, shadow=False):
        self.shadow_flags.append(shadow)
        return MetricReadings(values={"e": {B: 0.0, C: 0.0}}, requests={B: 100, C: 100})


def test_controller_runs_the_shadow_stage_through_the_actuator(tmp_path):
    s = RolloutSpec(route="llama", baseline=B, candidate=C, analysis_interval_s=5, min_window_s=5,
                    steps=[RolloutStep(weight=w, bake_s=10, min_requests=10) for w in (50, 100)],
                    gates=[MetricGate(name="e", query='e{arm="$arm"}', max=2.0, floor=0.01)],
                    quality=QualityGate(enabled=False), shadow=ShadowSpec(percent=20, duration_s=15, min_requests=10))
    now = [1000.0]
    act = InMemoryActuator({"llama": {B: 100, C: 0}}, ready={B: 1, C: 1})
    store, source = FileStore(tmp_path / "r.json"), Source()
    start_rollout(store, s, now[0])
    ctl = Controller(s, {B: 1, C: 1}, source, act, store, clock=lambda: now[0])
    stages = []
    for _ in range(100):
        ctl.tick()
        stages.append(store.load().state.stage)
        if store.load().state.terminal:
            break
        now[0] += 1
    assert store.load().state.phase == Phase.SUCCEEDED
    assert Stage.SHADOW in stages and stages.index(Stage.SHADOW) < stages.index(Stage.BAKING)
    shadow_on = ("shadow", {"arm": C, "percent": 20.0, "max_in_flight": 4, "timeout_s": 120.0})
    assert act.changes.index(shadow_on) < act.changes.index(("shadow", {})) < act.changes.index(("weights", {B: 50, C: 50}))
    assert [c for c in act.changes if c[0] == "shadow"] == [shadow_on, ("shadow", {})]
    n_shadow = source.shadow_flags.count(True)
    assert n_shadow >= 3 and source.shadow_flags[:n_shadow] == [True] * n_shadow and False in source.shadow_flags


def test_rollout_status_shows_the_shadow_stage():
    import time

    from rich.console import Console

    from corral.commands.rollout import status_view
    from corral.rollout.machine import RolloutState
    from corral.rollout.store import RolloutDoc

    state = RolloutState(phase=Phase.PROGRESSING, stage=Stage.SHADOW, started_at=time.time() - 20,
                         step_started_at=time.time() - 10, desired_weights={B: 100, C: 0}, shadow=SETTING)
    doc = RolloutDoc(id="r1", created_at=0.0, spec=spec().model_dump(mode="json"), state=state)
    console = Console(record=True, width=200)
    console.print(status_view(doc))
    text = console.export_text()
    assert "stage shadow" in text and f"50% of llama copied to {C}" in text and f"users on {B}" in text
    assert "20s left" in text or "19s left" in text


def test_kuberay_actuator_writes_the_shadow_into_serve_config_v2():
    from kubernetes import client
    from test_rollout_kuberay import PATH, StubApiServer, rayservice

    from corral.rollout.actuators import KubeRayActuator

    stub = StubApiServer(rayservice())
    stub.thread.start()
    try:
        cfg = client.Configuration()
        cfg.host, cfg.api_key = stub.url, {"BearerToken": "t"}
        act = KubeRayActuator("corral", "llm", app_name="demo", api=client.CustomObjectsApi(client.ApiClient(cfg)))
        setting = {"arm": "llama3", "percent": 10.0, "max_in_flight": 2, "timeout_s": 30.0}
        fleet_before = stub.fleet()
        assert act.set_shadow("chat", setting) is True
        assert stub.app()["deployments"] == [{"name": "CorralIngress", "user_config": {
            "routes": {"chat": {"llama2": 100, "llama3": 0}}, "shadow": {"chat": setting}}}]
        assert stub.fleet() == fleet_before  # args untouched: no replica restarts
        assert act.set_shadow("chat", dict(setting)) is False  # idempotent: no second PATCH
        assert act.set_shadow("chat", None) is True
        assert "shadow" not in stub.app()["deployments"][0]["user_config"]
        assert len([r for r in stub.requests if r[0] == "PATCH"]) == 2
        assert all(r[1] == PATH.format(ns="llm", name="corral") for r in stub.requests if r[0] == "PATCH")
    finally:
        stub.server.shutdown()
        stub.server.server_close()


# -- the golden subset ------------------------------------------------------------------------------

class QueryLog:
    """A PrometheusClient stand-in: answers every query with a number and keeps the queries."""

    def __init__(self):
        self.queries: list[str] = []

    def query(self, q, at=None):
        self.queries.append(q)
        return 6.0 if 'result="pass"' in q else 54.0 if 'result="fail"' in q else 100.0

    def vector(self, q, at=None):
        self.queries.append(q)
        return []


def test_shadow_analysis_counts_the_candidates_scored_golden_answers():
    client = QueryLog()
    m = PrometheusMetricSource(client).collect(spec(), window_s=60, elapsed_s=600, shadow=True)
    assert m.shadow_golden == [6.0, 60.0]
    golden_qs = [q for q in client.queries if "golden" in q]
    assert golden_qs == [f'sum(increase(ray_corral_shadow_golden_total{{route="llama",arm="{C}",result="{r}"}}[600s]))'
                         for r in ("pass", "fail")]
    assert PrometheusMetricSource(QueryLog()).collect(spec(), 60, 600).shadow_golden is None  # not in user steps
    off = spec(shadow=ShadowSpec(percent=50, duration_s=30, min_requests=10, golden=False))
    assert PrometheusMetricSource(QueryLog()).collect(off, 60, 600, shadow=True).shadow_golden is None


class GoldenSource(Source):
    def collect(self, spec, window_s, elapsed_s, shadow=False):
        m = super().collect(spec, window_s, elapsed_s, shadow)
        return MetricReadings(values=m.values, requests=m.requests, shadow_golden=[6, 60] if shadow else None)


class Golden:
    def run(self, arms):
        from corral.rollout.machine import QualityScores

        return QualityScores({B: 0.8, C: 0.8}, prompts=20)


def test_controller_sends_the_golden_rules_with_the_shadow_and_rolls_back_on_a_golden_drop(tmp_path):
    from corral.rollout.quality import GoldenPrompt, golden_rules

    s = RolloutSpec(route="llama", baseline=B, candidate=C, analysis_interval_s=5, min_window_s=5, failure_limit=1,
                    steps=[RolloutStep(weight=w, bake_s=10, min_requests=10) for w in (50, 100)],
                    gates=[MetricGate(name="e", query='e{arm="$arm"}', max=2.0, floor=0.01)],
                    quality=QualityGate(max_drop=0.1), shadow=ShadowSpec(percent=20, duration_s=60, min_requests=10))
    rules = golden_rules([GoldenPrompt(id="1", prompt="2+2?", answers=("4",), match="number")])
    now = [1000.0]
    act = InMemoryActuator({"llama": {B: 100, C: 0}}, ready={B: 1, C: 1})
    store = FileStore(tmp_path / "r.json")
    start_rollout(store, s, now[0])
    ctl = Controller(s, {B: 1, C: 1}, GoldenSource(), act, store, clock=lambda: now[0], quality_runner=Golden(),
                     golden_rules=rules)
    for _ in range(100):
        ctl.tick()
        if store.load().state.terminal:
            break
        now[0] += 1
    doc = store.load()
    assert doc.state.phase == Phase.ROLLED_BACK and "shadow_golden" in doc.events[-1].reason
    on = [c for c in act.changes if c[0] == "shadow"]
    assert on[0] == ("shadow", {"arm": C, "percent": 20.0, "max_in_flight": 4, "timeout_s": 120.0, "golden": rules})
    assert on[-1] == ("shadow", {}) and all(c[0] != "weights" or c[1] == {B: 100, C: 0} for c in act.changes)
    assert any("shadow in effect" in e.reason for e in doc.events)  # the stage started: the read-back matched
