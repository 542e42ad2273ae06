"""KubeRayActuator and the annotation store against a stub Kubernetes API server.

No API server can run here, so the stub below speaks the real HTTP protocol for one
custom resource (GET and PATCH /apis/ray.io/v1/namespaces/{ns}/rayservices/{name} with
application/merge-patch+json and application/json-patch+json, resourceVersion
preconditions answered with 409) and the official `kubernetes` client talks to it.

What Serve runs is read from the Ray dashboard (`GET /api/serve/applications/`), since
KubeRay's RayService status has no replica counts (kuberay rayservice_types.go,
`ServeDeploymentStatus{Status, Message}`). `StubServe` answers that endpoint with documents
validated against Ray's own `ApplicationDetails` model (ray/serve/schema.py); the test moves
it along as KubeRay and Serve would: `submit()` takes the RayService's serveConfigV2 as the
new target (replicas of a raised floor STARTING, the ingress UPDATING), `settle()` makes them
RUNNING and the deployments HEALTHY.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from http_stub import JsonHttpStub

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402

from corral.cluster.spec.rollout import CapacitySpec, QualityGate, RolloutSpec, RolloutStep  # noqa: E402
from corral.rollout.actuators import ActuatorError, ArmStatus, KubeRayActuator  # noqa: E402
from corral.rollout.controller import Controller, enqueue_command, start_rollout  # noqa: E402
from corral.rollout.gates import MetricReadings  # noqa: E402
from corral.rollout.machine import Phase, Stage  # noqa: E402
from corral.rollout.store import FileStore, RayServiceAnnotationStore, StoreConflict  # noqa: E402
from corral.serving.app import route_weights  # noqa: E402

PATH = "/apis/ray.io/v1/namespaces/{ns}/rayservices/{name}"


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc, ops):
    """RFC 6902 (add, replace, remove, test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        key = parts[-1]
        if op["op"] == "test":
            if parent.get(key) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif op["op"] in ("add", "replace"):
            parent[key] = op["value"]
        elif op["op"] == "remove":
            del parent[key]
        else:
            raise ValueError(op["op"])
    return doc


def _status(code, reason, message):
    """A Kubernetes Status object, as the API server answers a failed request."""
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                  "reason": reason, "message": message, "code": code}


class StubApiServer(JsonHttpStub):
    def __init__(self, obj):
        self.obj, self.version, self.requests = obj, 1, []
        self.obj["metadata"]["resourceVersion"] = "1"
        self.conflict_next = 0
        super().__init__(start=False)

    def _target(self):
        m = self.obj["metadata"]
        return PATH.format(ns=m["namespace"], name=m["name"])

    def handle(self, method, path, headers, body):
        if method == "GET":
            self.requests.append(("GET", path, None))
            if path.split("?")[0] != self._target():
                return _status(404, "NotFound", f"{path} not found")
            return 200, self.obj
        if method != "PATCH":
            return _status(405, "MethodNotAllowed", f"{method} is not supported")
        ctype = headers.get("Content-Type", "")
        self.requests.append(("PATCH", path, ctype))
        if path.split("?")[0] != self._target():
            return _status(404, "NotFound", f"{path} not found")
        try:
            if ctype == "application/merge-patch+json":
                rv = (body.get("metadata") or {}).get("resourceVersion")
                if self.conflict_next:
                    self.conflict_next -= 1
                    self._bump()  # someone else wrote meanwhile
                if rv is not None and rv != self.obj["metadata"]["resourceVersion"]:
                    return _status(409, "Conflict", "the object has been modified; "
                                   "please apply your changes to the latest version and try again")
                new = merge_patch(self.obj, body)
            elif ctype == "application/json-patch+json":
                new = json_patch(self.obj, body)
            else:
                return _status(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
        except (ValueError, KeyError) as exc:
            return _status(422, "Invalid", str(exc))
        self.obj = new
        self._bump()
        return 200, self.obj

    def _bump(self):
        self.version += 1
        self.obj["metadata"]["resourceVersion"] = str(self.version)

    def app(self):
        return yaml.safe_load(self.obj["spec"]["serveConfigV2"])["applications"][0]

    def fleet(self):
        return self.app()["args"]["fleet"]

    def min_replicas(self, arm):
        """The min_replicas override the actuator wrote for `arm` (None: no override)."""
        for d in self.app().get("deployments") or []:
            if d["name"] == f"LLMServer:{arm}":
                return d["autoscaling_config"]["min_replicas"]
        return None


class StubServe(JsonHttpStub):
    """The Ray dashboard's `GET /api/serve/applications/` for one application."""

    def __init__(self, api_stub: StubApiServer):
        from corral.serving.app import INGRESS_DEPLOYMENT, llm_deployment_name, route_weights

        self.api_stub, self.requests = api_stub, []
        self.ingress, self.llm = INGRESS_DEPLOYMENT, llm_deployment_name
        self._route_weights = route_weights
        self.deployments: dict[str, dict] = {}
        self.fail_next = 0
        self.submit()
        self.settle()
        super().__init__(start=False)

    def handle(self, method, path, headers, body):
        self.requests.append(path)
        if self.fail_next:
            self.fail_next -= 1
            return 503, {"error": "dashboard restarting"}
        if path != "/api/serve/applications/":
            return 404, {"error": path}
        return 200, {"applications": {"demo": self.app()}}

    def _dep(self, name):
        return self.deployments.setdefault(name, {"status": "HEALTHY", "replicas": [], "user_config": None,
                                                  "target": 0, "n": 0})

    def submit(self):
        """KubeRay submitted the current serveConfigV2: new targets, new replicas STARTING."""
        app = self.api_stub.app()
        ingress = self._dep(self.ingress)
        new_user_config = {"routes": self._route_weights(app)}
        if ingress["user_config"] != new_user_config:
            ingress["user_config"], ingress["target"] = new_user_config, 1
            ingress["replicas"] = [("UPDATING" if ingress["replicas"] else "STARTING")]
            ingress["status"] = "UPDATING"
        for arm in self.api_stub.fleet()["arms"]:
            d = self._dep(self.llm(arm["name"]))
            floor = self.api_stub.min_replicas(arm["name"])
            d["target"] = max(d["target"], floor if floor is not None else arm["replicas"]["min"])
            while len(d["replicas"]) < d["target"]:
                d["replicas"].append("STARTING")
                d["status"] = "UPSCALING"

    def settle(self):
        """Every replica RUNNING at the target version; deployments HEALTHY."""
        for d in self.deployments.values():
            d["replicas"] = ["RUNNING"] * len(d["replicas"])
            d["status"] = "HEALTHY"

    def set(self, arm, status=None, running=None):
        d = self._dep(self.llm(arm))
        if status is not None:
            d["status"] = status
        if running is not None:
            d["replicas"] = ["RUNNING"] * running

    def app(self) -> dict:
        from ray.serve.schema import ApplicationDetails

        deployments = {}
        for name, d in self.deployments.items():
            deployment_config = {"name": name}
            if d["user_config"] is not None:
                deployment_config["user_config"] = d["user_config"]
            deployments[name] = {
                "name": name, "status": d["status"], "status_trigger": "CONFIG_UPDATE_COMPLETED", "message": "",
                "deployment_config": deployment_config, "target_num_replicas": d["target"],
                "required_resources": {"CPU": 1},
                "replicas": [{"replica_id": f"{name}-{i}", "state": st, "start_time_s": 1.0}
                             for i, st in enumerate(d["replicas"])],
            }
        app = {"name": "demo", "route_prefix": "/", "docs_path": None, "status": "RUNNING", "message": "",
               "last_deployed_time_s": 1.0, "source": "declarative", "deployments": deployments,
               "external_scaler_enabled": False}
        ApplicationDetails.model_validate(app)  # the shape Ray's dashboard really serves
        return app


FLEET = {
    "name": "demo",
    "arms": [{"name": "llama2", "model": {"demo": "tiny-llama2-random"}, "replicas": {"min": 1, "max": 3}},
             {"name": "llama3", "model": {"demo": "smollm2-135m-instruct"}, "replicas": {"min": 0, "max": 3}}],
    "routes": [{"name": "chat", "arms": [{"arm": "llama2", "weight": 100}, {"arm": "llama3", "weight": 0}]}],
}


def rayservice():
    serve = {"applications": [{"name": "demo", "route_prefix": "/", "import_path": "corral.serving.app:app_builder",
                               "args": {"fleet": FLEET}}]}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "corral", "namespace": "llm", "annotations": {"keep": "me"}},
        "spec": {"serveConfigV2": yaml.safe_dump(serve)},
        "status": {"activeServiceStatus": {"applicationStatuses": {"demo": {
            "status": "RUNNING",
            "serveDeploymentStatuses": {"LLMServer:llama2": {"status": "HEALTHY"},
                                        "LLMServer:llama3": {"status": "UPDATING"}}}}}},
    }


@pytest.fixture
def stub():
    s = StubApiServer(rayservice())
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def serve(stub):
    s = StubServe(stub)
    s.thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def api(stub):
    cfg = client.Configuration()
    cfg.host = stub.url
    cfg.api_key = {"BearerToken": "t"}
    return client.CustomObjectsApi(client.ApiClient(cfg))


def test_get_and_set_weights_patches_serve_config(stub, api, serve):
    act = KubeRayActuator("corral", "llm", app_name="demo", api=api, dashboard_url=serve.url)
    assert act.get_weights("chat") == {"llama2": 100, "llama3": 0}
    assert act.set_weights("chat", {"llama2": 50, "llama3": 50}) is True
    # Written, not applied: Serve still runs the old weights until KubeRay submits and the ingress takes them.
    assert act.configured_weights("chat") == {"llama2": 50, "llama3": 50}
    assert act.get_weights("chat") == {"llama2": 100, "llama3": 0}
    serve.submit()
    assert act.get_weights("chat") is None  # ingress UPDATING: not known to be in effect
    serve.settle()
    # Live weights go to the ingress user_config override; args.fleet (the code version) is untouched.
    assert route_weights(stub.app())["chat"] == {"llama2": 50, "llama3": 50}
    assert stub.app()["deployments"] == [{"name": "CorralIngress", "user_config": {"routes": {"chat": {"llama2": 50, "llama3": 50}}}}]
    assert stub.fleet() == FLEET
    assert act.get_weights("chat") == {"llama2": 50, "llama3": 50}
    patches = [r for r in stub.requests if r[0] == "PATCH"]
    assert patches == [("PATCH", PATH.format(ns="llm", name="corral"), "application/merge-patch+json")]
    # idempotent: same weights -> no PATCH at all
    assert act.set_weights("chat", {"llama2": 50, "llama3": 50}) is False
    assert len([r for r in stub.requests if r[0] == "PATCH"]) == 1
    assert stub.obj["metadata"]["annotations"]["keep"] == "me"
    assert stub.obj["spec"]["serveConfigV2"].startswith("applications:")


def test_conflict_is_retried_on_fresh_read(stub, api):
    act = KubeRayActuator("corral", "llm", api=api)
    stub.conflict_next = 1
    assert act.set_weights("chat", {"llama2": 30, "llama3": 70}) is True
    codes = [r for r in stub.requests if r[0] == "PATCH"]
    assert len(codes) == 2
    assert act.configured_weights("chat") == {"llama2": 30, "llama3": 70}


def test_a_writer_that_never_stops_is_an_error_and_nothing_is_written(stub, api):
    before = stub.obj["spec"]["serveConfigV2"]
    act = KubeRayActuator("corral", "llm", api=api, retries=3)
    stub.conflict_next = 3
    with pytest.raises(ActuatorError, match="kept changing under us \\(3 attempts\\)"):
        act.set_weights("chat", {"llama2": 30, "llama3": 70})
    assert len([r for r in stub.requests if r[0] == "PATCH"]) == 3
    assert stub.obj["spec"]["serveConfigV2"] == before
    store = RayServiceAnnotationStore("corral", "llm", api=api, retries=2)
    spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3", steps=[RolloutStep(weight=100, bake_s=1)])
    stub.conflict_next = 2
    with pytest.raises(StoreConflict, match="rollout annotation: rayservice llm/corral kept changing"):
        start_rollout(store, spec, 5.0)
    assert store.load() is None


def test_bad_weights_and_missing_objects_are_actuator_errors(stub, api):
    act = KubeRayActuator("corral", "llm", api=api)
    with pytest.raises(ActuatorError, match="sum to 100"):
        act.set_weights("chat", {"llama2": 50, "llama3": 40})
    with pytest.raises(ActuatorError, match="unknown arm"):
        act.set_weights("chat", {"llama2": 50, "gpt": 50})
    with pytest.raises(ActuatorError, match="no route"):
        act.configured_weights("nope")
    with pytest.raises(ActuatorError, match="HTTP 404"):
        KubeRayActuator("missing", "llm", api=api).configured_weights("chat")


def test_replica_floor_raised_then_restored(stub, api):
    act = KubeRayActuator("corral", "llm", api=api)
    assert act.set_replica_floor("llama3", 2) is True
    assert stub.min_replicas("llama3") == 2 and stub.fleet() == FLEET  # an override, not args
    assert act.set_replica_floor("llama3", 2) is False
    assert act.set_replica_floor("llama3", 3) is True
    assert act.set_replica_floor("llama3", 5) is False  # capped at the spec's max (3)
    assert act.set_replica_floor("llama3", None) is True
    assert stub.min_replicas("llama3") == 0  # the fleet's own min, not the last floor
    assert act.set_replica_floor("llama3", None) is False
    assert act.set_replica_floor("llama2", 1) is False  # floor below the spec min changes nothing


def test_readiness_is_running_replicas_not_the_configured_floor(stub, api, serve):
    act = KubeRayActuator("corral", "llm", api=api, dashboard_url=serve.url)
    assert act.arm_status(["llama2", "llama3"]) == {"llama2": ArmStatus(1, "HEALTHY"), "llama3": ArmStatus(0, "HEALTHY")}
    act.set_replica_floor("llama3", 2)
    assert act.arm_status(["llama3"]) == {"llama3": ArmStatus(0, "HEALTHY")}  # not submitted yet
    serve.submit()
    assert act.arm_status(["llama3"]) == {"llama3": ArmStatus(0, "UPSCALING")}  # loading weights
    serve.set("llama3", status="UPSCALING", running=1)
    serve.deployments["LLMServer:llama3"]["replicas"].append("STARTING")
    assert act.arm_status(["llama3"])["llama3"].ready == 1
    serve.settle()
    assert act.arm_status(["llama3"]) == {"llama3": ArmStatus(2, "HEALTHY")}
    serve.set("llama3", status="DEPLOY_FAILED", running=0)
    assert act.arm_status(["llama3"]) == {"llama3": ArmStatus(0, "DEPLOY_FAILED")}
    assert serve.requests and all(p == "/api/serve/applications/" for p in serve.requests)


def test_dashboard_down_is_an_actuator_error(stub, api, serve):
    act = KubeRayActuator("corral", "llm", api=api, dashboard_url=serve.url)
    serve.fail_next = 2
    with pytest.raises(ActuatorError, match="503"):
        act.arm_status(["llama2"])
    with pytest.raises(ActuatorError, match="503"):
        act.get_weights("chat")
    assert act.get_weights("chat") == {"llama2": 100, "llama3": 0}
    with pytest.raises(ActuatorError, match="no application 'other'"):
        KubeRayActuator("corral", "llm", app_name="other", api=api, dashboard_url=serve.url).arm_status(["llama2"])


def test_default_dashboard_is_the_rayservice_head_service(api):
    assert KubeRayActuator("corral", "llm", api=api).dashboard_url == "http://corral-head-svc.llm.svc:8265"


class FakeSource:
    def collect(self, spec, window_s, elapsed_s):
        return MetricReadings(values={}, requests={"llama2": 100, "llama3": 100})


def test_controller_waits_for_running_replicas_and_applied_weights(stub, api, serve, tmp_path):
    """The first step needs 2 warm candidate replicas; weights move only once Serve runs them,
    and bake time starts only once the ingress runs the new weights."""
    spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3", gates=[], quality=QualityGate(enabled=False),
                       steps=[RolloutStep(weight=50, bake_s=1000), RolloutStep(weight=100, bake_s=1000)],
                       capacity=CapacitySpec(min_ready_replicas=2, warmup_timeout_s=10_000))
    act = KubeRayActuator("corral", "llm", app_name="demo", api=api, dashboard_url=serve.url)
    store = FileStore(tmp_path / "r.json")
    start_rollout(store, spec, 0.0)
    t = [0.0]
    ctl = Controller(spec, {"llama2": 3, "llama3": 3}, FakeSource(), act, store, clock=lambda: t[0])

    def tick(n=1):
        for _ in range(n):
            t[0] += 1
            ctl.tick()
        return store.load().state

    st = tick(3)
    assert st.stage == Stage.CAPACITY and stub.min_replicas("llama3") == 2
    serve.submit()
    serve.set("llama3", running=1)
    serve.deployments["LLMServer:llama3"]["replicas"].append("STARTING")
    st = tick(3)
    assert st.stage == Stage.CAPACITY and act.configured_weights("chat") == {"llama2": 100, "llama3": 0}
    assert "(1 ready)" in st.reason
    serve.settle()
    st = tick()
    assert st.stage == Stage.SHIFTING and act.configured_weights("chat") == {"llama2": 50, "llama3": 50}
    st = tick(3)
    assert st.stage == Stage.SHIFTING and st.step_started_at is None  # written, not yet applied
    serve.submit()
    st = tick()
    assert st.stage == Stage.SHIFTING and "seen unknown" in st.reason  # ingress UPDATING
    serve.settle()
    st = tick()
    assert st.stage == Stage.BAKING and st.step_started_at == t[0] and st.phase == Phase.PROGRESSING


def test_dead_candidate_on_kuberay_rolls_back(stub, api, serve, tmp_path):
    spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3", gates=[], quality=QualityGate(enabled=False),
                       steps=[RolloutStep(weight=50, bake_s=1000), RolloutStep(weight=100, bake_s=1000)],
                       capacity=CapacitySpec(dead_after_s=30))
    act = KubeRayActuator("corral", "llm", app_name="demo", api=api, dashboard_url=serve.url)
    store = FileStore(tmp_path / "r.json")
    start_rollout(store, spec, 0.0)
    t = [0.0]
    ctl = Controller(spec, {"llama2": 3, "llama3": 3}, FakeSource(), act, store, clock=lambda: t[0])
    for _ in range(3):
        t[0] += 1
        ctl.tick()
        serve.submit()
        serve.settle()
    assert store.load().state.stage == Stage.BAKING
    serve.set("llama3", status="UNHEALTHY", running=0)
    for _ in range(40):
        t[0] += 1
        ctl.tick()
        if store.load().state.terminal:
            break
    doc = store.load()
    assert doc.state.phase == Phase.ROLLED_BACK and t[0] > 30
    assert "candidate 'llama3' is dead: deployment UNHEALTHY" in doc.events[-1].reason
    assert act.configured_weights("chat") == {"llama2": 100, "llama3": 0}


def test_annotation_store_round_trip_and_json_patch_path(stub, api):
    store = RayServiceAnnotationStore("corral", "llm", api=api)
    assert store.load() is None
    spec = RolloutSpec(route="chat", baseline="llama2", candidate="llama3",
                       steps=[RolloutStep(weight=50, bake_s=1), RolloutStep(weight=100, bake_s=1)])
    doc = start_rollout(store, spec, 5.0)
    stub.conflict_next = 1  # a concurrent writer: the store retries
    enqueue_command(store, "pause", 6.0, reason="hold on")
    loaded = store.load()
    assert loaded.id == doc.id and [c.op for c in loaded.commands] == ["pause"]
    assert stub.obj["metadata"]["annotations"]["keep"] == "me"
    # Another writer using a JSON patch (e.g. kubectl patch --type=json) is understood by the stub too.
    api.patch_namespaced_custom_object(
        "ray.io", "v1", "llm", "rayservices", "corral",
        [{"op": "add", "path": "/metadata/annotations/other~1key", "value": "x"}],
        _content_type="application/json-patch+json")
    assert stub.obj["metadata"]["annotations"]["other/key"] == "x"
    assert store.load().id == doc.id
