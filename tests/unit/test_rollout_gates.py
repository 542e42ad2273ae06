"""Gate rendering/evaluation, the Prometheus client against a stub HTTP API, the golden set."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from http_stub import JsonHttpStub

from corral.cluster import metric_names as mn
from corral.cluster.spec.rollout import MetricGate, RolloutSpec, default_gates
from corral.rollout.gates import Verdict, evaluate_gate, render
from corral.rollout.metrics import MetricSourceError, PrometheusMetricSource
from corral.rollout.quality import GoldenPrompt, GoldenSetRunner, load_golden, resolve_golden_path, score
from corral.serving.prometheus import PrometheusClient, PrometheusError


def test_default_gates_render_with_exported_metric_names():
    rendered = {g.name: render(g.query, "chat", "llama3", 60) for g in default_gates()}
    req = mn.exported(mn.REQUESTS)
    assert rendered["error_rate"] == (
        f'(sum(rate({req}{{route="chat",arm="llama3",status=~"5..|stream_error|exception|timeout"}}[60s])) or vector(0))'
        f' / sum(rate({req}{{route="chat",arm="llama3"}}[60s]))')
    assert f"{mn.exported(mn.TTFT)}_bucket{{route=\"chat\",arm=\"llama3\"}}[60s]" in rendered["ttft_p95"]
    assert f"{mn.exported(mn.ITL)}_bucket" in rendered["itl_p95"]
    assert 'le=~"10|10\\\\.0"' in rendered["goodput"]
    assert all("$" not in q for q in rendered.values())


def test_unknown_placeholder_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="latnecy"):
        MetricGate(name="x", query="$latnecy", max=1, floor=0.1)
    with pytest.raises(ValueError, match="neither max nor min"):
        MetricGate(name="x", query="$ttft")
    with pytest.raises(ValueError, match="floor"):
        MetricGate(name="x", query="$ttft", max=1.2)


@pytest.mark.parametrize("cand,base,verdict", [
    (0.0, 0.0, Verdict.PASS),        # both under the floor -> ratio 1
    (0.015, 0.0, Verdict.PASS),      # 1.5% vs floor 1% -> 1.5
    (0.05, 0.0, Verdict.FAIL),       # 5x the floor
    (0.05, 0.03, Verdict.PASS),
    (None, 0.01, Verdict.INCONCLUSIVE),
    (0.01, float("nan"), Verdict.INCONCLUSIVE),
])
def test_ratio_gate(cand, base, verdict):
    gate = MetricGate(name="error_rate", query="$requests", compare="ratio", max=2.0, floor=0.01)
    assert evaluate_gate(gate, cand, base).verdict == verdict


def test_min_and_absolute_gates():
    goodput = MetricGate(name="goodput", query="$requests", compare="ratio", min=0.9, floor=0.01)
    assert evaluate_gate(goodput, 0.8, 1.0).verdict == Verdict.FAIL
    assert evaluate_gate(goodput, 0.95, 1.0).verdict == Verdict.PASS
    ttft = MetricGate(name="ttft", query="$ttft", compare="absolute", max=2.0)
    r = evaluate_gate(ttft, 2.5, None)
    assert r.verdict == Verdict.FAIL and "> max 2.0" in r.message


class PromStub(JsonHttpStub):
    def __init__(self, answer):
        self.answer, self.queries = answer, []
        super().__init__()

    def handle(self, method, path, headers, body):
        q = parse_qs(urlparse(path).query)["query"][0]
        self.queries.append(q)
        return self.answer(q)


def vec(*values):
    return 200, {"status": "success", "data": {"resultType": "vector",
                                               "result": [{"metric": {}, "value": [1.0, str(v)]} for v in values]}}


def test_prometheus_source_collects_every_gate_for_both_arms():
    def answer(q):
        if "increase" in q:
            return vec(120)
        return vec(0.2 if 'arm="llama3"' in q else 0.1)

    stub = PromStub(answer)
    try:
        spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3")
        m = PrometheusMetricSource(PrometheusClient(stub.url)).collect(spec, 60, 45)
        assert m.values["ttft_p95"] == {"llama2": 0.1, "llama3": 0.2}
        assert m.requests == {"llama2": 120.0, "llama3": 120.0}
        assert len(stub.queries) == 2 * len(spec.gates) + 2
        assert any("[45s]" in q for q in stub.queries)
    finally:
        stub.close()


def test_prometheus_client_edge_cases():
    answers = iter([vec(), vec("NaN"), vec(1, 2),
                    (400, {"status": "error", "errorType": "bad_data", "error": "parse error"})])
    stub = PromStub(lambda q: next(answers))
    try:
        c = PrometheusClient(stub.url)
        assert c.query("a") is None
        assert c.query("b") is None
        with pytest.raises(PrometheusError, match="2 series"):
            c.query("c")
        with pytest.raises(PrometheusError, match="parse error"):
            c.query("d")
    finally:
        stub.close()
    with pytest.raises(PrometheusError, match="unreachable"):
        PrometheusClient(stub.url, timeout_s=0.5).query("up")


def test_prometheus_source_turns_client_failures_into_metric_source_errors():
    stub = PromStub(lambda q: (500, {"status": "error", "errorType": "internal", "error": "boom"}))
    try:
        spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3")
        with pytest.raises(MetricSourceError, match="boom"):
            PrometheusMetricSource(PrometheusClient(stub.url)).collect(spec, 60, 45)
    finally:
        stub.close()


def test_builtin_golden_set_loads_and_is_scorable():
    prompts = load_golden(resolve_golden_path("builtin:llama_basic"))
    assert len(prompts) >= 15 and len({p.id for p in prompts}) == len(prompts)
    for p in prompts:
        assert score(p, p.answers[0].strip("^$\\W*")) == 1.0 or p.match == "regex"
        assert score(p, "I don't know") == 0.0


@pytest.mark.parametrize("match,answers,reply,expected", [
    ("contains", ("Paris",), "The capital is paris.", 1.0),
    ("exact", ("Paris",), " Paris. ", 1.0),
    ("exact", ("Paris",), "Paris, France", 0.0),
    ("number", ("4",), "2 + 2 = 4", 0.0),   # the first number is 2
    ("number", ("4",), "4.", 1.0),
    ("number", ("20",), "It is 20.0", 1.0),
    ("regex", (r"^\W*hello\W*$",), "Hello!", 1.0),
])
def test_scoring_rules(match, answers, reply, expected):
    assert score(GoldenPrompt("x", "q", answers, match), reply) == expected


def test_golden_runner_over_openai_http():
    seen = []

    def handle(method, path, headers, body):
        seen.append(body)
        if body["model"] == "broken":
            return 500, {}
        text = "Paris" if body["model"] == "good" else "zxq"
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}

    srv = JsonHttpStub(handle)
    try:
        prompts = [GoldenPrompt("fr", "Capital of France?", ("Paris",)), GoldenPrompt("de", "Capital?", ("Berlin",))]
        r = GoldenSetRunner(srv.url, prompts).run(["good", "bad", "broken"])
        assert r.error is None and r.scores == {"good": 0.5, "bad": 0.0, "broken": 0.0}
        assert all(b["temperature"] == 0 for b in seen) and {b["model"] for b in seen} == {"good", "bad", "broken"}
    finally:
        srv.close()
    down = GoldenSetRunner(srv.url, prompts, timeout_s=0.5).run(["good"])
    assert down.error and "golden set" in down.error


def test_golden_runner_sends_the_given_api_key_and_reports_a_refusal():
    auth = []

    def handle(method, path, headers, body):
        auth.append(headers.get("Authorization"))
        if headers.get("Authorization") != "Bearer sk-real":
            return 401, {"error": {"message": "invalid API key"}}
        return 200, {"choices": [{"message": {"content": "Paris"}}]}

    srv = JsonHttpStub(handle)
    try:
        url, prompts = srv.url, [GoldenPrompt("fr", "Capital?", ("Paris",))]
        assert GoldenSetRunner(url, prompts, api_key="sk-real").run(["a"]).scores == {"a": 1.0}
        # No key: no header at all; a refusal (4xx) is the endpoint's failure, not a score of 0.
        refused = GoldenSetRunner(url, prompts).run(["a"])
        assert refused.error and "HTTP 401" in refused.error and "invalid API key" in refused.error
        assert auth == ["Bearer sk-real", None]
    finally:
        srv.close()


def test_scoped_client_adds_the_namespace_to_every_corral_selector():
    """On Kubernetes the gates read only this release's series: prometheus-operator labels every
    scraped series with its namespace, and the controller scopes its queries to that namespace."""
    from corral.serving.prometheus import parse_scope, scope_query

    stub = PromStub(lambda q: vec(1))
    try:
        spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3")
        PrometheusMetricSource(PrometheusClient(stub.url, scope={"namespace": "llm"})).collect(spec, 60, 45)
        corral_selectors = [s for q in stub.queries for s in re.findall(r"ray_corral_\w+\{[^}]*\}", q)]
        assert corral_selectors and all(s.split("{", 1)[1].startswith('namespace="llm",') for s in corral_selectors)
    finally:
        stub.close()
    assert scope_query("up", {"namespace": "llm"}) == "up"
    assert scope_query('sum(ray_corral_requests_total{})', {"namespace": "a"}) == 'sum(ray_corral_requests_total{namespace="a"})'
    assert parse_scope("") == {} and parse_scope("namespace=a,service=b") == {"namespace": "a", "service": "b"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_scope("namespace")


def test_rollout_cli_scopes_gates_to_the_kube_namespace():
    from corral.cli import build_parser
    from corral.cluster.spec import load_fleet
    from corral.commands.rollout import _wiring

    parser = build_parser()
    fleet = load_fleet(None)
    kube = parser.parse_args(["rollout", "run", "--kube", "llm-corral", "--namespace", "team-a"])
    local = parser.parse_args(["rollout", "run"])
    explicit = parser.parse_args(["rollout", "run", "--kube", "x", "--prometheus-scope", ""])
    from unittest import mock

    with mock.patch("corral.commands.rollout._actuator", return_value=None):
        assert _wiring(kube, fleet, None)["prometheus_scope"] == {"namespace": "team-a"}
        assert _wiring(local, fleet, None)["prometheus_scope"] == {}
        assert _wiring(explicit, fleet, None)["prometheus_scope"] == {}
