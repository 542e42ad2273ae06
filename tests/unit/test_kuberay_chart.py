"""The chart on a real cluster's terms (rendered with the real helm; no Kubernetes runs here):
weights, keys, the front door, the controller's command, engine timeouts, served model IDs,
alerts and disruption budgets."""

from __future__ import annotations

import re

import pytest
import yaml
from test_helm_chart import CASES, CHART, by_kind, render, run_helm, values_file

from corral.cluster import catalog, kuberay
from corral.cluster.spec import parse_fleet

TWO_ARMS = CHART / "examples" / "llama2-to-llama3-70b-rollout-2x8-h100.yaml"


def _workers(docs):
    (rs,) = by_kind(docs, "RayService")
    return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]


def _head(docs):
    (rs,) = by_kind(docs, "RayService")
    return rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]


def _env(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _fails(tmp_path, values: dict, name="bad.yaml") -> str:
    proc = run_helm("template", "llm", str(CHART), "-n", "serving", values=[values_file(tmp_path, values, name)],
                    check=False)
    assert proc.returncode != 0, proc.stdout[:500]
    return proc.stderr


# -- weights (items 2, 10) ------------------------------------------------------------------------

def test_engines_are_not_forced_offline_for_hub_models():
    from corral.serving.app import llm_config_dicts

    fleet = parse_fleet(yaml.safe_load(TWO_ARMS.read_text())["fleet"], source="example")
    for cfg in llm_config_dicts(fleet):
        assert "HF_HUB_OFFLINE" not in cfg["runtime_env"]["env_vars"]


def test_local_weights_stay_offline():
    from corral.serving.app import llm_config_dicts

    fleet = parse_fleet({"name": "f", "arms": [{"name": "a", "model": {"demo": "smollm2-135m-instruct"}}],
                         "routes": [{"name": "r", "arms": [{"arm": "a", "weight": 100}]}]}, source="demo")
    (cfg,) = llm_config_dicts(fleet)
    assert cfg["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_hf_token_comes_from_a_secret_and_downloads_are_allowed():
    (w,) = _workers(render([TWO_ARMS]))
    env = _env(w["template"]["spec"]["containers"][0])
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert "HF_HUB_OFFLINE" not in env


def test_offline_only_when_the_cache_is_declared_full(tmp_path):
    docs = render([TWO_ARMS, values_file(tmp_path, {"modelCache": {"offline": True}})])
    (w,) = _workers(docs)
    assert _env(w["template"]["spec"]["containers"][0])["HF_HUB_OFFLINE"]["value"] == "1"


def test_no_model_cache_claim_on_the_default_storage_class(tmp_path):
    err = _fails(tmp_path, {"modelCache": {"enabled": True}})
    assert "modelCache.existingClaim" in err and "ReadWriteMany" in err


def test_model_cache_claim_with_an_explicit_class_or_an_existing_claim(tmp_path):
    docs = render([values_file(tmp_path, {"modelCache": {"enabled": True, "storageClass": "efs-sc"}})])
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "efs-sc" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    docs = render([values_file(tmp_path, {"modelCache": {"enabled": True, "existingClaim": "weights"}}, "claim.yaml")])
    assert not by_kind(docs, "PersistentVolumeClaim")
    (w,) = _workers(docs)
    (vol,) = [v for v in w["template"]["spec"]["volumes"] if v["name"] == "model-cache"]
    assert vol["persistentVolumeClaim"]["claimName"] == "weights"


@pytest.mark.parametrize("case", CASES)
def test_engine_ready_timeout_is_raised_for_gpu_fleets(case):
    for w in _workers(render(CASES[case])):
        env = _env(w["template"]["spec"]["containers"][0])
        # vLLM's default is 600 s (vllm/envs.py, VLLM_ENGINE_READY_TIMEOUT_S).
        assert int(env["VLLM_ENGINE_READY_TIMEOUT_S"]["value"]) >= 1800


def test_worker_env_envfrom_and_volumes_are_open(tmp_path):
    extra = {"workers": {"env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
                         "envFrom": [{"secretRef": {"name": "s3-creds"}}],
                         "volumes": [{"name": "extra", "emptyDir": {}}],
                         "volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}}
    (w,) = _workers(render([values_file(tmp_path, extra)]))
    c = w["template"]["spec"]["containers"][0]
    assert _env(c)["NCCL_DEBUG"]["value"] == "WARN"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "extra", "mountPath": "/extra"} in c["volumeMounts"]
    assert {"name": "extra", "emptyDir": {}} in w["template"]["spec"]["volumes"]


# -- keys (item 6) --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_no_pod_reads_a_secret_it_may_not_find(case):
    """The head reads no Secret (nothing in it would read the keys); workers only the HF token."""
    docs = render(CASES[case])
    for c in _head(docs)["containers"]:
        assert not [e for e in c.get("env", []) if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]


def test_auth_is_on_by_default():
    from test_kuberay_serve_config import app_of, deployments

    auth = deployments(app_of(render()))["CorralIngress"]["user_config"]["auth"]
    assert auth["enabled"] is True and auth["keys"]


def test_an_open_endpoint_behind_an_ingress_must_be_waived(tmp_path):
    err = _fails(tmp_path, {"apiKeys": {"enabled": False}, "ingress": {"enabled": True}})
    assert "apiKeys.allowUnauthenticated" in err
    docs = render([values_file(tmp_path, {"apiKeys": {"enabled": False, "allowUnauthenticated": True},
                                          "ingress": {"enabled": True}}, "waived.yaml")])
    assert by_kind(docs, "Ingress") and not [s for s in by_kind(docs, "Secret")
                                            if s["metadata"]["name"].endswith("-api-keys")]


def test_an_unreadable_existing_secret_needs_its_hashes_in_the_fleet(tmp_path):
    from corral.serving.auth import hash_key

    err = _fails(tmp_path, {"apiKeys": {"existingSecret": "my-keys"}})
    assert "fleet.auth.keys" in err
    fleet = yaml.safe_load((CHART / "values.yaml").read_text())["fleet"]
    fleet["auth"] = {"enabled": True, "keys": [{"name": "ops", "sha256": hash_key("sk-ops")}]}
    docs = render([values_file(tmp_path, {"apiKeys": {"existingSecret": "my-keys"}, "fleet": fleet}, "ok.yaml")])
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-controller")]
    env = _env(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["CORRAL_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "my-keys", "key": "api-key"}


def test_helm_test_sends_the_key_the_ingress_accepts():
    import base64

    from test_kuberay_serve_config import app_of, deployments

    from corral.serving.auth import KeyRing

    docs = render()
    (pod,) = by_kind(docs, "Pod")
    ref = _env(pod["spec"]["containers"][0])["API_KEY"]["valueFrom"]["secretKeyRef"]
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
    key = base64.b64decode(secret["data"][ref["key"]]).decode()
    ring = KeyRing.from_config(deployments(app_of(docs))["CorralIngress"]["user_config"]["auth"])
    assert ring.identify(key)[1] is None
    assert "Bearer ${API_KEY" in pod["spec"]["containers"][0]["args"][0]


# -- front door (item 7) --------------------------------------------------------------------------

def test_ingress_route_and_helm_test_use_kuberays_serve_service(tmp_path):
    docs = render([values_file(tmp_path, {"ingress": {"enabled": True}, "httpRoute": {"enabled": True}})])
    (rs,) = by_kind(docs, "RayService")
    serve_svc = kuberay.serve_service_name(rs["metadata"]["name"])
    assert serve_svc == "llm-corral-serve-svc"
    (ing,) = by_kind(docs, "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": serve_svc, "port": {"number": 8000}}
    (route,) = by_kind(docs, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": serve_svc, "port": 8000}]
    (pod,) = by_kind(docs, "Pod")
    assert _env(pod["spec"]["containers"][0])["BASE"]["value"] == f"http://{serve_svc}.serving.svc:8000"
    # No Service of the chart selects head pods (it would include a pending cluster's head).
    for svc in by_kind(docs, "Service"):
        assert svc["spec"]["selector"].get("app.kubernetes.io/component") != "ray-head"


def test_upgrade_strategy_is_exposed(tmp_path):
    (rs,) = by_kind(render(), "RayService")
    assert rs["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    (rs,) = by_kind(render([TWO_ARMS]), "RayService")
    assert rs["spec"]["upgradeStrategy"] == {"type": "None"}
    assert "/rayService/upgradeStrategy" in _fails(tmp_path, {"rayService": {"upgradeStrategy": "Rolling"}})


def test_rayservice_name_is_at_most_47_characters(tmp_path):
    # KubeRay: MaxRayServiceNameLength = 53 - 6 (ray-operator/controllers/ray/utils/constant.go).
    ok = "r" * 47
    (rs,) = by_kind(render([values_file(tmp_path, {"fullnameOverride": ok})]), "RayService")
    assert rs["metadata"]["name"] == ok
    err = _fails(tmp_path, {"fullnameOverride": "r" * 48}, "long.yaml")
    assert "at most 47" in err
    with pytest.raises(ValueError, match="at most 47"):
        kuberay.rayservice({"applications": []}, [], name="r" * 48)


# -- controller (items 4, 5) ----------------------------------------------------------------------

CONTROLLER_ARGV = ["corral", "rollout", "run", "/etc/corral/fleet.yaml", "--daemon", "--kube", "llm-corral",
                   "--namespace", "serving", "--prometheus", "http://prometheus-operated.monitoring.svc:9090",
                   "--endpoint", "http://llm-corral-serve-svc.serving.svc:8000", "--api-key-env", "CORRAL_API_KEY",
                   "--heartbeat-file", "/tmp/corral-controller.alive"]
LIVENESS = ["corral", "rollout", "alive", "--heartbeat-file", "/tmp/corral-controller.alive", "--max-age-s", "120"]


def _controller(docs):
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-controller")]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def _expanded_argv(c) -> list[str]:
    env = {e["name"]: e.get("value", "serving") for e in c["env"]}  # the namespace comes from the downward API
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in c["command"] + c.get("args", [])]


def test_controller_runs_as_a_daemon_against_the_serve_service():
    c = _controller(render())
    assert _expanded_argv(c) == CONTROLLER_ARGV
    assert c["livenessProbe"]["exec"]["command"] == LIVENESS
    assert _env(c)["CORRAL_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    assert _env(c)["CORRAL_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_controller_command_is_one_the_cli_accepts():
    from corral.cli import build_parser

    parser = build_parser()
    for argv in (CONTROLLER_ARGV, LIVENESS):
        args = parser.parse_args(argv[1:])
        assert args.func.__module__ == "corral.commands.rollout"


# -- served model IDs (item 11), hardening ------------------------------------------------------

def test_catalog_serves_chat_models():
    for m in catalog.MODELS.values():
        assert m.hf_id.endswith(("-Instruct", "-chat-hf")), m.hf_id
    for path in (CHART / "examples").glob("*.yaml"):
        for arm in yaml.safe_load(path.read_text())["fleet"]["arms"]:
            assert arm["model"]["hf"].endswith(("-Instruct", "-chat-hf")), (path.name, arm["model"])


def test_helm_test_completes_once_per_arm_pinned_and_checks_the_arm():
    docs = render([TWO_ARMS])
    (pod,) = by_kind(docs, "Pod")
    script = pod["spec"]["containers"][0]["args"][0]
    for arm in ("llama-2-70b-chat", "llama-3-70b-instruct"):
        assert f'"model": "{arm}"' in script
        assert f"x-corral-arm: *{arm}" in script
    assert script.count("/v1/chat/completions") == 2
    assert int(_env(pod["spec"]["containers"][0])["WAIT_S"]["value"]) >= 1800


def test_prometheus_rule_is_scoped_and_alerts_on_a_dead_fleet(tmp_path):
    docs = render([values_file(tmp_path, {"prometheusRule": {"enabled": True}})])
    (rule,) = by_kind(docs, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for r in rules:
        for sel in re.findall(r"ray_corral_requests_total\{([^}]*)\}", r["expr"]):
            assert 'namespace="serving"' in sel and 'service="llm-corral-metrics"' in sel, r["expr"]
    (down,) = [r for r in rules if r.get("alert") == "CorralFleetDown"]
    assert down["expr"].startswith("absent(") and 'namespace="serving"' in down["expr"]


def test_gpu_workers_are_not_evicted_voluntarily():
    docs = render([TWO_ARMS])
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 0
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "ray-worker"
    for w in _workers(docs):
        meta = w["template"]["metadata"]
        assert meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert pdb["spec"]["selector"]["matchLabels"].items() <= meta["labels"].items()


# -- security scan waivers --------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_every_checkov_waiver_names_a_check_and_says_why(case):
    waivers = 0
    for d in render(CASES[case]):
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k.startswith("checkov.io/skip"):
                waivers += 1
                assert re.fullmatch(r"CKV_K8S_\d+=.{30,}", v), (d["metadata"]["name"], k, v)
    assert waivers > 0


def test_rollout_operators_get_a_role_on_this_rayservice_only():
    docs = render([TWO_ARMS])
    (rs,) = by_kind(docs, "RayService")
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-rollout-operator")]
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"] and rule["resourceNames"] == [rs["metadata"]["name"]]
        assert set(rule["verbs"]) <= {"get", "patch"}
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-rollout-operator")]
    assert binding["subjects"] == [{"kind": "Group", "name": "ml-platform", "apiGroup": "rbac.authorization.k8s.io"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert not [r for r in by_kind(render(), "Role") if r["metadata"]["name"].endswith("-rollout-operator")]
