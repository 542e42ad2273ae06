"""`helm upgrade` against a live release: what the chart reads from the cluster with `lookup`.

The rollout controller owns the route weights and replica floors of the live RayService; Helm owns
the rest. The chart takes the live weights and floors into its render (while a route's arms are
unchanged), so an upgrade neither reverts a rollout in progress nor, with Helm 4's server-side
apply and --force-conflicts, loses them. A generated API key and the keys of an existing Secret are
read the same way.

`lookup` is empty under plain `helm template`; here helm renders with `--dry-run=server` against a
stub Kubernetes API (discovery plus GET of the objects below, over real HTTP), the same calls
`helm upgrade` makes before it applies. Not run here: the apply itself and its field ownership.
"""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from http_stub import JsonHttpStub
from test_helm_chart import CHART, K8S_VERSION, by_kind, helm, render, values_file
from test_kuberay_serve_config import app_of, code_version, deployments

from corral.serving import app as serve_app
from corral.serving.auth import KeyRing, hash_key

TWO_ARMS = CHART / "examples" / "llama2-to-llama3-70b-rollout-2x8-h100.yaml"
NS, RELEASE, NAME = "serving", "llm", "llm-corral"

KINDS = {
    "v1": [("secrets", "Secret"), ("configmaps", "ConfigMap"), ("services", "Service"),
           ("serviceaccounts", "ServiceAccount"), ("pods", "Pod"), ("persistentvolumeclaims", "PersistentVolumeClaim")],
    "apps/v1": [("deployments", "Deployment")],
    "rbac.authorization.k8s.io/v1": [("roles", "Role"), ("rolebindings", "RoleBinding")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy"), ("ingresses", "Ingress")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "ray.io/v1": [("rayservices", "RayService")],
}


def _discovery() -> dict[str, dict]:
    docs = {
        "/version": {"major": "1", "minor": "30", "gitVersion": f"v{K8S_VERSION}"},
        "/api": {"kind": "APIVersions", "versions": ["v1"],
                 "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
             "preferredVersion": {"groupVersion": gv, "version": "v1"}} for gv in KINDS if gv != "v1"]},
    }
    for gv, resources in KINDS.items():
        docs[("/api/" if gv == "v1" else "/apis/") + gv] = {
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": [{"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": ["get", "list"]}
                          for n, k in resources]}
    return docs


def _owned(obj: dict) -> dict:
    """Helm's ownership metadata, as a live object of this release carries it."""
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    meta.setdefault("labels", {})["app.kubernetes.io/managed-by"] = "Helm"
    meta.setdefault("annotations", {}).update({"meta.helm.sh/release-name": RELEASE,
                                               "meta.helm.sh/release-namespace": NS})
    meta["namespace"] = NS
    return obj


class StubApi(JsonHttpStub):
    """GET-only Kubernetes API: discovery and the given objects (404 for everything else)."""

    def __init__(self, objects: list[dict]):
        self.routes = _discovery()
        for o in objects:
            group = "api/v1" if o["apiVersion"] == "v1" else f"apis/{o['apiVersion']}"
            plural = next(n for n, k in KINDS[o["apiVersion"]] if k == o["kind"])
            self.routes[f"/{group}/namespaces/{NS}/{plural}/{o['metadata']['name']}"] = _owned(o)
        self.requests: list[str] = []
        super().__init__()

    def handle(self, method, path, headers, body):
        path = path.split("?")[0]
        self.requests.append(path)
        found = self.routes.get(path)
        if found is None:
            return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        return 200, found

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": self.url}}],
            "users": [{"name": "stub", "user": {"token": "stub"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": NS}}]}))
        return path


def render_live(tmp_path: Path, live: list[dict], values: dict) -> tuple[list[dict], StubApi]:
    stub = StubApi(live)
    try:
        vf = tmp_path / "values.yaml"
        vf.write_text(yaml.safe_dump(values))
        env = {"KUBECONFIG": str(stub.kubeconfig(tmp_path / "kubeconfig")), "HOME": str(tmp_path),
               "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([helm(), "template", RELEASE, str(CHART), "-n", NS, "-f", str(vf),
                               "--dry-run=server", "--disable-openapi-validation", "--qps", "1000"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d], stub
    finally:
        stub.close()


def _values(max_replicas: int = 2) -> dict:
    values = yaml.safe_load(TWO_ARMS.read_text())
    for arm in values["fleet"]["arms"]:
        arm["replicas"]["max"] = max_replicas
    values["apiKeys"] = {"keys": "sk-corral-live-test"}
    return values


def _live_rayservice(docs: list[dict], app: dict) -> dict:
    (rs,) = by_kind(docs, "RayService")
    rs = copy.deepcopy(rs)
    rs["spec"]["serveConfigV2"] = yaml.safe_dump({"applications": [app]}, sort_keys=False)
    return rs


def test_upgrade_keeps_the_weights_and_floors_the_controller_set(tmp_path):
    values = _values()
    first = render([values_file(tmp_path, values, "v.yaml")])
    # Mid-rollout: the controller moved 25% to the candidate and raised its floor to 2.
    app = app_of(first)
    serve_app.set_route_weights(app, "llama", {"llama-2-70b-chat": 75, "llama-3-70b-instruct": 25})
    serve_app.set_replica_floor(app, "llama-3-70b-instruct", 2)
    live = _live_rayservice(first, app)

    # The operator changes something unrelated (the controller's Prometheus) and upgrades.
    values["rolloutController"] = {"prometheusUrl": "http://prometheus.example:9090"}
    docs, stub = render_live(tmp_path, [live], values)
    assert f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}" in stub.requests
    upgraded = app_of(docs)
    assert serve_app.route_weights(upgraded) == {"llama": {"llama-2-70b-chat": 75, "llama-3-70b-instruct": 25}}
    assert deployments(upgraded)["LLMServer:llama-3-70b-instruct"]["autoscaling_config"]["min_replicas"] == 2
    assert code_version(upgraded) == code_version(app)


def test_values_win_when_a_routes_arms_change_or_when_told(tmp_path):
    values = _values()
    first = render([values_file(tmp_path, values, "v.yaml")])
    app = app_of(first)
    serve_app.set_route_weights(app, "llama", {"llama-2-70b-chat": 75, "llama-3-70b-instruct": 25})
    live = _live_rayservice(first, app)

    told = copy.deepcopy(values)
    told["rayService"] = {"keepLiveWeights": False}
    docs, _ = render_live(tmp_path, [live], told)
    assert serve_app.route_weights(app_of(docs)) == {"llama": {"llama-2-70b-chat": 100, "llama-3-70b-instruct": 0}}

    # The route now has one arm only: the live weights (for two arms) no longer apply.
    single = copy.deepcopy(values)
    single["fleet"]["routes"][0]["arms"] = [{"arm": "llama-3-70b-instruct", "weight": 100}]
    single["fleet"].pop("rollout")
    docs, _ = render_live(tmp_path, [live], single)
    assert serve_app.route_weights(app_of(docs)) == {"llama": {"llama-3-70b-instruct": 100}}


def test_a_generated_key_survives_the_upgrade(tmp_path):
    key = "sk-corral-generatedAtInstall0000000000"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{NAME}-api-keys"},
              "data": {"api-key": base64.b64encode(key.encode()).decode(),
                       "api-keys": base64.b64encode(key.encode()).decode()}}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs, _ = render_live(tmp_path, [secret], {"fleet": values["fleet"]})
    (rendered,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == f"{NAME}-api-keys"]
    assert base64.b64decode(rendered["data"]["api-key"]).decode() == key
    ring = KeyRing.from_config(deployments(app_of(docs))["CorralIngress"]["user_config"]["auth"])
    assert ring.identify(key) == (hash_key(key), None)


def test_keys_of_an_existing_secret_are_hashed_at_install(tmp_path):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-keys"},
              "data": {"api-key": base64.b64encode(b"sk-ops").decode(),
                       "api-keys": base64.b64encode(b"sk-app-1,sk-app-2").decode()}}
    docs, _ = render_live(tmp_path, [secret], {"apiKeys": {"existingSecret": "team-keys"}})
    ring = KeyRing.from_config(deployments(app_of(docs))["CorralIngress"]["user_config"]["auth"])
    for key in ("sk-ops", "sk-app-1", "sk-app-2"):
        assert ring.identify(key)[1] is None, key
    assert ring.identify("sk-other")[1].status == 401
    assert not [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "team-keys"]  # not Helm's


@pytest.fixture(autouse=True)
def _no_kubeconfig_leak(monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
