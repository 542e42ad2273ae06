"""KubeRay objects from a fleet spec and a cluster plan.

Plain dicts (YAML-able):

* `worker_group_values(plan)`: one entry of the Helm chart's `workerGroups` value;
  `helm_values(plan, ...)` a whole values overlay (fleet + worker groups) for `helm install -f`.
* `worker_group_spec(values)` / `rayservice(serve_config, ...)`: the KubeRay `workerGroupSpecs`
  entry and the whole `RayService`, for users without Helm. The Serve config is
  `corral.serving.app.serve_config(fleet)` (its one home; this layer cannot import it). The chart
  renders the same fields from the same values (tests/unit/test_helm_chart.py compares the two).

Nothing here talks to Kubernetes, and `corral.serving` is not imported (layers are one-way).
"""

from __future__ import annotations

from typing import Any

from corral.cluster.planner import Candidate, ClusterPlan

RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "ghcr.io/corral-llm/corral:0.1.0-ray2.60.0-gpu"
SERVE_PORT = 8000
METRICS_PORT = 8080
MODEL_CACHE_PATH = "/models"

# Per-GPU sizing of a worker pod (host CPU and RAM for tokenization, the Ray worker processes,
# and loading safetensors through page cache); override in the values.
CPUS_PER_GPU = 8
MEMORY_GIB_PER_GPU = 64
SHM_SIZE = "16Gi"
# vLLM gives an engine 600 s to come up (VLLM_ENGINE_READY_TIMEOUT_S, vllm/envs.py); loading 141 GB
# of Llama 3 70B from network storage plus memory profiling can take longer.
ENGINE_READY_TIMEOUT_S = 3600
# KubeRay caps RayService names (MaxRayServiceNameLength = MaxRayClusterNameLength - 6 = 47,
# ray-operator/controllers/ray/utils/constant.go; ValidateRayServiceMetadata in validation.go).
MAX_RAYSERVICE_NAME = 47
# Cluster autoscaler: never evict a pod holding a loaded replica to scale a node down.
SAFE_TO_EVICT = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}


def serve_service_name(rayservice_name: str) -> str:
    """KubeRay's Serve Service of a RayService (GenerateServeServiceName,
    ray-operator/controllers/ray/utils/util.go): it only selects the cluster that serves."""
    return f"{rayservice_name}-serve-svc"


def nodes_used(candidate: Candidate) -> int:
    """Worker nodes the plan occupies (the highest planned node index + 1)."""
    return 1 + max(n for stages in candidate.stage_nodes for n in stages)


def worker_group_values(plan: ClusterPlan, candidate: Candidate | None = None, name: str | None = None) -> dict[str, Any]:
    """A `workerGroups` entry of the Helm chart's values for a planned layout."""
    c = candidate or plan.best
    r = plan.request
    gpu = r.gpu
    n = nodes_used(c)
    return {
        "name": name or f"gpu-{gpu.name.lower()}",
        "replicas": n,
        "minReplicas": n,
        "maxReplicas": r.nodes,
        "gpusPerNode": r.gpus_per_node,
        "cpu": str(CPUS_PER_GPU * r.gpus_per_node),
        "memory": f"{MEMORY_GIB_PER_GPU * r.gpus_per_node}Gi",
        "shmSize": SHM_SIZE,
        "nodeSelector": {"nvidia.com/gpu.product": gpu.k8s_product},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def fleet_for_plan(plan: ClusterPlan, fleet_name: str, candidate: Candidate | None = None,
                   arm_name: str | None = None) -> dict[str, Any]:
    """A one-arm GPU fleet spec (dict) serving the planned layout under the model's name."""
    c = candidate or plan.best
    r = plan.request
    arm = plan.arm(arm_name, c)
    fleet: dict[str, Any] = {
        "apiVersion": "corral/v1",
        "kind": "Fleet",
        "name": fleet_name,
        "cluster": {
            "device": "gpu",
            "nodes": r.nodes,
            "devices_per_node": r.gpus_per_node,
            "gpu_type": r.gpu_type,
        },
        "server": {"host": "0.0.0.0", "port": SERVE_PORT, "metrics_port": METRICS_PORT},
        "arms": [arm],
        "routes": [{"name": "llama", "arms": [{"arm": arm["name"], "weight": 100}]}],
    }
    if r.gpu_hourly_usd is not None:
        fleet["cluster"]["gpu_hourly_usd"] = r.gpu_hourly_usd
    return fleet


def helm_values(plan: ClusterPlan, fleet_name: str, candidate: Candidate | None = None) -> dict[str, Any]:
    """A values overlay for `helm install -f`: the fleet and its GPU worker group."""
    return {
        "fleet": fleet_for_plan(plan, fleet_name, candidate),
        "workerGroups": [worker_group_values(plan, candidate)],
    }


def _labels(release: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "corral",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": component,
    }


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def _pod_security_context() -> dict[str, Any]:
    # The Ray images run as user `ray` (uid 1000, gid 100).
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _volumes(shm_size: str, model_cache_claim: str | None) -> tuple[list[dict], list[dict]]:
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": model_cache_claim}} if model_cache_claim else {"emptyDir": {}}
    )
    volumes.append({"name": "model-cache", **cache})
    mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_PATH})
    return volumes, mounts


def worker_group_spec(values: dict[str, Any], *, release: str = "corral", image: str = DEFAULT_IMAGE,
                      model_cache_claim: str | None = None) -> dict[str, Any]:
    """The KubeRay `workerGroupSpecs` entry for one `workerGroups` values entry."""
    gpus = values["gpusPerNode"]
    resources = {**values.get("resources", {}), "cpu": values["cpu"], "memory": values["memory"],
                 "nvidia.com/gpu": str(gpus)}
    volumes, mounts = _volumes(values.get("shmSize", SHM_SIZE), model_cache_claim)
    return {
        "groupName": values["name"],
        "replicas": values["replicas"],
        "minReplicas": values["minReplicas"],
        "maxReplicas": values["maxReplicas"],
        "rayStartParams": {"num-gpus": str(gpus), **values.get("rayStartParams", {})},
        "template": {
            "metadata": {"labels": _labels(release, "ray-worker"), "annotations": dict(SAFE_TO_EVICT)},
            "spec": {
                "securityContext": _pod_security_context(),
                "nodeSelector": dict(values.get("nodeSelector", {})),
                "tolerations": list(values.get("tolerations", [])),
                "containers": [{
                    "name": "ray-worker",
                    "image": image,
                    "env": [{"name": "HF_HOME", "value": MODEL_CACHE_PATH},
                            {"name": "VLLM_ENGINE_READY_TIMEOUT_S", "value": str(ENGINE_READY_TIMEOUT_S)}],
                    "resources": {"requests": dict(resources), "limits": dict(resources)},
                    "volumeMounts": mounts,
                    "securityContext": _security_context(),
                }],
                "volumes": volumes,
            },
        },
    }


def rayservice(serve_config: dict[str, Any], worker_groups: list[dict[str, Any]], *, name: str = "corral",
               image: str = DEFAULT_IMAGE, head_cpu: str = "4", head_memory: str = "16Gi",
               model_cache_claim: str | None = None, upgrade_strategy: str = "NewCluster") -> dict[str, Any]:
    """A whole `ray.io/v1` RayService for a Serve config (`corral.serving.app.serve_config(fleet)`)
    and its worker groups (values entries)."""
    import yaml  # only needed to embed serveConfigV2 as the string KubeRay expects

    if len(name) > MAX_RAYSERVICE_NAME:
        raise ValueError(f"RayService name {name!r} is {len(name)} characters; KubeRay accepts at most "
                         f"{MAX_RAYSERVICE_NAME}")
    if upgrade_strategy not in ("NewCluster", "None"):
        raise ValueError(f"upgrade_strategy must be NewCluster or None, got {upgrade_strategy!r}")
    volumes, mounts = _volumes("2Gi", None)
    head_resources = {"cpu": head_cpu, "memory": head_memory}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": _labels(name, "rayservice")},
        "spec": {
            "upgradeStrategy": {"type": upgrade_strategy},
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    # The head runs the Serve controller and proxy, not engine replicas.
                    "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {
                        "metadata": {"labels": _labels(name, "ray-head")},
                        "spec": {
                            "securityContext": _pod_security_context(),
                            "containers": [{
                                "name": "ray-head",
                                "image": image,
                                "ports": [
                                    {"name": "gcs", "containerPort": 6379},
                                    {"name": "dashboard", "containerPort": 8265},
                                    {"name": "serve", "containerPort": SERVE_PORT},
                                    {"name": "metrics", "containerPort": METRICS_PORT},
                                ],
                                "resources": {"requests": dict(head_resources), "limits": dict(head_resources)},
                                "volumeMounts": mounts[:1],
                                "securityContext": _security_context(),
                            }],
                            "volumes": volumes[:1],
                        },
                    },
                },
                "workerGroupSpecs": [
                    worker_group_spec(w, release=name, image=image, model_cache_claim=model_cache_claim)
                    for w in worker_groups
                ],
            },
        },
    }

