"""The Helm chart, checked with the real helm binary (no Kubernetes cluster runs here).

* `helm lint` and `helm template` for the default values and both examples;
* every rendered built-in kind validated strictly with kubernetes-validate;
* RayService (and its rayClusterConfig as a RayCluster spec) validated against the KubeRay CRD
  openAPIV3Schema shipped in tests/k8s-schemas (see its README for source and licence);
* the rendered serveConfigV2 `args.fleet` parses as a fleet spec and equals the values' fleet
  without its live parts (routes, rollout, auth: see test_kuberay_serve_config.py);
* bad values rejected by values.schema.json with a message naming the field;
* values.schema.json equals what scripts/gen-values-schema.py generates from the pydantic model.
"""

from __future__ import annotations

import copy
import json
import re
import runpy
import subprocess
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from corral.cluster import kuberay
from corral.cluster.spec import parse_fleet

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "corral"
HELM = ROOT / ".tools" / "bin" / "helm"
CRDS = ROOT / "tests" / "k8s-schemas"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
K8S_VERSION = "1.30.0"

# Kinds that are CRDs of other projects; they get structural checks below, not kubernetes-validate.
CRD_KINDS = {"RayService", "ServiceMonitor", "PrometheusRule", "HTTPRoute"}

# Every optional object switched on, to validate the templates behind the flags too.
ALL_ON = {
    "ingress": {"enabled": True, "className": "nginx", "host": "llm.example.com", "tlsSecret": "llm-tls",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"}},
    "httpRoute": {"enabled": True, "hostnames": ["llm.example.com"]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "modelCache": {"enabled": True, "existingClaim": "llama-weights"},
    "hfToken": {"existingSecret": "hf-token"},
    "apiKeys": {"keys": "sk-one,sk-two"},
    "networkPolicy": {"endpointFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]},
    "head": {"nodeSelector": {"pool": "cpu"}, "rayStartParams": {"num-gpus": "0"}},
    "workers": {"env": [{"name": "NCCL_DEBUG", "value": "WARN"}], "envFrom": [{"secretRef": {"name": "s3"}}]},
}


@lru_cache(maxsize=1)
def helm() -> str:
    if not HELM.exists():
        # The setup script installs it; do it here too so a fresh checkout's test run works.
        subprocess.run([str(ROOT / "scripts" / "install-helm.sh")], check=False, capture_output=True, timeout=300)
    if not HELM.exists():
        pytest.fail(f"{HELM} missing and scripts/install-helm.sh could not install it (needs npm + the npm registry)")
    return str(HELM)


def run_helm(*args: str, values: list[Path] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [helm(), *args]
    for v in values or []:
        cmd += ["-f", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(values: list[Path] | None = None, release: str = "llm") -> list[dict]:
    return [dict(d) for d in _render(tuple(values or ()), release)]


@lru_cache(maxsize=None)
def _render(values: tuple[Path, ...], release: str) -> tuple[dict, ...]:
    out = run_helm("template", release, str(CHART), "--namespace", "serving", "--kube-version", K8S_VERSION,
                   values=list(values)).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def values_file(tmp_path: Path, data: dict, name: str = "values.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@lru_cache(maxsize=None)
def crd_validator(filename: str) -> jsonschema.Draft7Validator:
    # The C loader: the CRDs are ~1 MB each and the pure-Python loader takes seconds.
    crd = yaml.load((CRDS / filename).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    # One validator per CRD: jsonschema.validate() would re-check the 1 MB schema on every call.
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def validate_against_crd(obj: dict, filename: str) -> None:
    errors = sorted(crd_validator(filename).iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


CASES = {"default": []} | {p.stem: [p] for p in EXAMPLES}


def test_both_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert names == {"llama3-70b-tp8-1x8-h100", "llama3-70b-tp4-pp2-2x4-a100-80gb",
                     "llama2-to-llama3-70b-rollout-2x8-h100"}


@pytest.mark.parametrize("case", CASES)
def test_lint(case):
    proc = run_helm("lint", "--strict", str(CHART), values=CASES[case])
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", list(CASES) + ["all-optional-objects"])
def test_rendered_objects_validate(case, tmp_path):
    values = CASES[case] if case in CASES else [values_file(tmp_path, ALL_ON)]
    docs = render(values)
    kinds = sorted({d["kind"] for d in docs})
    for d in docs:
        if d["kind"] in CRD_KINDS:
            continue
        # strict: unknown fields are errors, as a real API server with field validation would report.
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    (rs,) = by_kind(docs, "RayService")
    validate_against_crd(rs, "ray.io_rayservices.yaml")
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
               "spec": rs["spec"]["rayClusterConfig"]}
    validate_against_crd(cluster, "ray.io_rayclusters.yaml")
    expected = {"Deployment", "NetworkPolicy", "Pod", "RayService", "Role", "PodDisruptionBudget",
                "RoleBinding", "Secret", "Service", "ServiceAccount", "ConfigMap"}
    if case == "llama2-to-llama3-70b-rollout-2x8-h100":
        expected |= {"PersistentVolumeClaim"}  # a ReadWriteMany cache on an explicit class
    if case == "all-optional-objects":
        expected |= {"Ingress", "HTTPRoute", "ServiceMonitor", "PrometheusRule"}
    assert set(kinds) == expected


@pytest.mark.parametrize("case", CASES)
def test_serve_config_carries_the_fleet_verbatim(case):
    (rs,) = by_kind(render(CASES[case]), "RayService")
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "corral.serving.app:app_builder" and app["route_prefix"] == "/"
    fleet = parse_fleet(app["args"]["fleet"], source=f"{case}: serveConfigV2 args.fleet")
    assert app["name"] == fleet.name
    if CASES[case]:
        given = yaml.safe_load(CASES[case][0].read_text())
        # Nothing of the chart's default fleet leaks into the example's (Helm deep-merges maps);
        # the live parts go to per-deployment overrides (test_kuberay_serve_config.py).
        live = {"routes", "rollout", "auth"}
        assert app["args"]["fleet"] == {k: v for k, v in given["fleet"].items() if k not in live}


def test_examples_are_what_the_planner_emits(tmp_path):
    from corral.cluster.planner import PlanRequest, plan_cluster

    tp8 = yaml.safe_load((CHART / "examples" / "llama3-70b-tp8-1x8-h100.yaml").read_text())
    plan = plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="H100-80GB", gpus_per_node=8, nodes=1))
    assert tp8 == kuberay.helm_values(plan, "llama3-70b-h100")
    assert tp8["fleet"]["arms"][0]["engine"]["tensor_parallel_size"] == 8

    pp2 = yaml.safe_load((CHART / "examples" / "llama3-70b-tp4-pp2-2x4-a100-80gb.yaml").read_text())
    plan = plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="A100-80GB", gpus_per_node=4, nodes=2,
                                    concurrency=64))
    assert pp2 == kuberay.helm_values(plan, "llama3-70b-a100")
    engine = pp2["fleet"]["arms"][0]["engine"]
    assert (engine["tensor_parallel_size"], engine["pipeline_parallel_size"]) == (4, 2)


def test_worker_groups_match_the_python_kuberay_spec():
    values = CASES["llama3-70b-tp4-pp2-2x4-a100-80gb"]
    given = yaml.safe_load(values[0].read_text())
    (rs,) = by_kind(render(values), "RayService")
    (rendered,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (python,) = [kuberay.worker_group_spec(w) for w in given["workerGroups"]]
    for key in ("groupName", "replicas", "minReplicas", "maxReplicas"):
        assert rendered[key] == python[key]
    pod_r, pod_p = rendered["template"]["spec"], python["template"]["spec"]
    assert pod_r["nodeSelector"] == pod_p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod_r["tolerations"] == pod_p["tolerations"]
    res_r, res_p = pod_r["containers"][0]["resources"], pod_p["containers"][0]["resources"]
    assert res_r == res_p and res_r["limits"]["nvidia.com/gpu"] == "4"
    assert rendered["replicas"] == 2  # two 4-GPU nodes for TP=4 x PP=2
    shm = [v for v in pod_r["volumes"] if v["name"] == "dshm"][0]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert rendered["rayStartParams"] == python["rayStartParams"] == {"num-gpus": "4"}
    # The Python RayService (for users without Helm) validates against the CRD as well.
    from corral.serving.app import serve_config

    config = serve_config(parse_fleet(given["fleet"], source="example"))
    validate_against_crd(kuberay.rayservice(config, given["workerGroups"]), "ray.io_rayservices.yaml")


def test_controller_role_is_least_privilege():
    docs = render()
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (role,) = by_kind(docs, "Role")
    (rs,) = by_kind(docs, "RayService")
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"]
        assert rule["resourceNames"] == [rs["metadata"]["name"]]
        assert set(rule["verbs"]) <= {"get", "patch"}
    assert {tuple(r["resources"]) for r in role["rules"]} == {("rayservices",), ("rayservices/status",)}
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "serving"


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for d in docs:
        if d["kind"] == "Pod":
            specs.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] == "Deployment":
            specs.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "RayService":
            rc = d["spec"]["rayClusterConfig"]
            specs.append(("head", rc["headGroupSpec"]["template"]["spec"]))
            specs += [(w["groupName"], w["template"]["spec"]) for w in rc["workerGroupSpecs"]]
    return specs


@pytest.mark.parametrize("case", CASES)
def test_every_pod_runs_as_non_root(case):
    specs = _pod_specs(render(CASES[case]))
    assert len(specs) >= 4
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (name, c["name"])


def test_helm_test_hook_calls_v1_models():
    (pod,) = by_kind(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert "call /v1/models" in script and env["BASE"] == "http://llm-corral-serve-svc.serving.svc:8000"
    assert "llama-3.1-8b-instruct" in script  # every arm must be listed


def test_dashboards_ship_as_sidecar_configmaps():
    maps = [m for m in by_kind(render(), "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert {m["metadata"]["name"] for m in maps} == {
        "llm-corral-dashboard-fleet", "llm-corral-dashboard-arm", "llm-corral-dashboard-rollout"}
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        (body,) = m["data"].values()
        assert json.loads(body)["panels"]


def test_prometheus_rule_burn_rates_use_the_objective(tmp_path):
    docs = render([values_file(tmp_path, {"prometheusRule": {"enabled": True, "availabilityObjective": 0.99}})])
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = {r.get("alert") or r.get("record"): r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "> 0.144" in exprs["CorralErrorBudgetBurnFast"]  # 14.4 x (1 - 0.99)
    assert "ray_corral_requests_total" in exprs["corral:error_ratio:rate1h"]
    # No rollout alert by default (the controller exports no rollback series); one when given.
    assert "CorralRolloutFailed" not in exprs
    docs = render([values_file(tmp_path, {"prometheusRule": {"enabled": True, "rolloutFailedExpr": "up == 0"}},
                               name="with-rollout.yaml")])
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = {r.get("alert") or r.get("record"): r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert exprs["CorralRolloutFailed"] == "up == 0"


BAD_VALUES = [
    ({"fleet": {"arms": [{"name": "a", "model": {"hf": "x/y"}, "engine": {"tensor_parallel_size": "eight"}}]}},
     "/fleet/arms/0/engine/tensor_parallel_size"),
    ({"fleet": {"arms": [{"name": "a", "model": {"hf": "x/y"}, "engine": {"max_num_seq": 8}}]}},
     "additional properties 'max_num_seq' not allowed"),
    ({"fleet": {"cluster": {"device": "tpu"}}}, "/fleet/cluster/device"),
    ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpusPerNode": 0,
                        "cpu": "8", "memory": "64Gi"}]}, "/workerGroups/0/gpusPerNode"),
    ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpusPerNode": 8,
                        "cpu": "lots", "memory": "64Gi"}]}, "/workerGroups/0/cpu"),
    ({"rayService": {"upgradeStrategy": "Bogus"}}, "/rayService/upgradeStrategy"),
    ({"workerGroups": [{"name": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpusPerNode": 8,
                        "cpu": "8", "memory": "64Gi", "rayStartParams": {"num-gpus": 8}}]},
     "/workerGroups/0/rayStartParams/num-gpus"),
    ({"rolloutControler": {"enabled": False}}, "additional properties 'rolloutControler' not allowed"),
]


@pytest.mark.parametrize("bad,message", BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_rejected_by_the_schema(bad, message, tmp_path):
    proc = run_helm("template", "llm", str(CHART), values=[values_file(tmp_path, bad)], check=False)
    assert proc.returncode != 0
    assert "don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_values_schema_is_generated_from_the_fleet_model():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen-values-schema.py"))
    committed = (CHART / "values.schema.json").read_text()
    assert committed == gen["render"](), "stale: run python scripts/gen-values-schema.py"
    # The spec defaults the templates read (Helm's .Files cannot read values.schema.json).
    assert (CHART / "files" / "spec-defaults.json").read_text() == gen["render_defaults"](), \
        "stale: run python scripts/gen-values-schema.py"
    schema = json.loads(committed)
    assert schema["properties"]["fleet"] == {"$ref": "#/$defs/FleetSpec",
                                            "description": schema["properties"]["fleet"]["description"]}
    # The default values satisfy it (helm checks this too; here without helm, with jsonschema).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema, cls=jsonschema.Draft202012Validator)
    broken = copy.deepcopy(values)
    broken["fleet"]["arms"][0]["engine"]["gpu_memory_utilization"] = 1.5
    with pytest.raises(jsonschema.ValidationError, match="1.5 is greater than the maximum of 1"):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


def test_every_value_is_documented():
    """helm-docs convention: each leaf value outside `fleet` (documented by the spec itself) and
    outside list items (documented by their list's comment) has a `# --` comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, documented, in_fleet, list_indent = [], False, False, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented = True
            continue
        if stripped.startswith("#") or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("-"):
            list_indent = indent if list_indent is None else min(list_indent, indent)
            documented = False
            continue
        if list_indent is not None and indent <= list_indent:
            list_indent = None
        m = re.match(r"^\s*([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        key, rest = m.group(1), m.group(2).strip()
        if indent == 0:
            in_fleet = key == "fleet"
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        nested = not rest and len(nxt) - len(nxt.lstrip()) > indent and not nxt.lstrip().startswith("-")
        if not in_fleet and list_indent is None and not nested and not documented:
            undocumented.append(key)
        documented = False
    assert not undocumented, f"values without a '# --' comment: {undocumented}"


def test_dashboard_queries_use_exported_series_and_resolve():
    from corral.cluster import metric_names as mn
    from corral.cluster.dashboards import panel_queries

    queries = panel_queries()
    assert {q.dashboard for q in queries} == {"fleet", "arm", "rollout"}
    router = {mn.exported(getattr(mn, n)) for n in ("REQUESTS", "LATENCY", "TTFT", "ITL", "INPUT_TOKENS",
                                                    "OUTPUT_TOKENS", "FEEDBACK", "SHADOW_REQUESTS", "SHADOW_TTFT",
                                                    "SHADOW_DROPPED", "SHADOW_GOLDEN")}
    for q in queries:
        expr = q.resolved()
        assert "$" not in expr, (q.dashboard, q.panel)
        for series in re.findall(r"\bray_corral_\w+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", series)
            assert base in router, f"{q.dashboard}/{q.panel}: {series} is not a router series"
        for series in re.findall(r"\bray_vllm\w*", expr):
            assert series.startswith("ray_vllm_"), series
    assert sum("ray_vllm_" in q.expr for q in queries) >= 5


def test_controller_reads_the_mounted_fleet():
    docs = render()
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-controller")]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    fleet_path = container["command"][3]
    assert container["command"][:3] == ["corral", "rollout", "run"]
    # The fleet file it names is the ConfigMap mounted there, holding a valid fleet spec.
    mount = next(m for m in container["volumeMounts"] if fleet_path.startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]]
    parse_fleet(yaml.safe_load(cm["data"][Path(fleet_path).name]), source="chart fleet ConfigMap")
