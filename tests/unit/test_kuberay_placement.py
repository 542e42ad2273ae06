"""Placement on KubeRay: accelerator types as Ray detects them, per-group `ray start` parameters.

Ray labels a GPU node with `accelerator_type:<X>` derived from the NVML device name
(ray/_private/accelerators/nvidia_gpu.py: NVIDIA_GPU_NAME_PATTERN and
`NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type`, which `get_current_node_accelerator_type`
applies to `pynvml.nvmlDeviceGetName`). Ray Serve LLM turns an arm's `accelerator_type` into a
bundle resource `accelerator_type:<X>`, so a type no node carries never schedules.
"""

from __future__ import annotations

import pytest
import yaml
from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
from test_helm_chart import by_kind, render, values_file

from corral.cluster import catalog, kuberay
from corral.cluster.planner import PlanRequest, plan_cluster

# What `nvidia-smi --query-gpu=name` prints on each catalog GPU (NVML device names).
NVML_NAMES = {
    "A100-40GB": "NVIDIA A100-SXM4-40GB",
    "A100-80GB": "NVIDIA A100-SXM4-80GB",
    "H100-80GB": "NVIDIA H100 80GB HBM3",
    "H200-141GB": "NVIDIA H200",
    "L40S": "NVIDIA L40S",
    "A10G": "NVIDIA A10G",
}


def test_every_catalog_gpu_has_a_known_nvml_name():
    assert set(NVML_NAMES) == set(catalog.GPUS)
    for name, gpu in catalog.GPUS.items():
        assert gpu.nvml_name == NVML_NAMES[name]


@pytest.mark.parametrize("gpu", sorted(catalog.GPUS))
def test_accelerator_type_is_what_ray_detects(gpu):
    detected = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(NVML_NAMES[gpu])
    assert catalog.gpu(gpu).ray_accelerator_type == detected


@pytest.mark.parametrize("gpu", sorted(catalog.GPUS))
def test_planned_arms_ask_for_the_detected_type(gpu):
    g = catalog.gpu(gpu)
    model = "llama-3-8b" if g.memory_gib < 30 else "llama-3-70b"
    gpus = 8
    plan = plan_cluster(PlanRequest(model=model, gpu_type=gpu, gpus_per_node=gpus, nodes=2))
    values = kuberay.helm_values(plan, "x")
    (arm,) = values["fleet"]["arms"]
    assert arm["placement"]["accelerator_type"] == NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(g.nvml_name)
    # The 40 and 80 GB A100 share Ray's type; the node selector tells them apart.
    assert values["workerGroups"][0]["nodeSelector"] == {"nvidia.com/gpu.product": g.k8s_product}


def test_a100_example_schedules_on_ray_detected_nodes():
    from test_helm_chart import CHART

    given = yaml.safe_load((CHART / "examples" / "llama3-70b-tp4-pp2-2x4-a100-80gb.yaml").read_text())
    (arm,) = given["fleet"]["arms"]
    assert arm["placement"]["accelerator_type"] == "A100"


def _rayservice(docs):
    (rs,) = by_kind(docs, "RayService")
    return rs["spec"]["rayClusterConfig"]


def test_head_takes_no_gpu_or_cpu_work():
    head = _rayservice(render())["headGroupSpec"]["rayStartParams"]
    assert head["num-gpus"] == "0" and head["num-cpus"] == "0"


def test_head_gpu_and_cpu_stay_zero_even_if_overridden(tmp_path):
    docs = render([values_file(tmp_path, {"head": {"rayStartParams": {"num-gpus": "8", "num-cpus": "4",
                                                                       "object-store-memory": "1000000000"}}})])
    head = _rayservice(docs)["headGroupSpec"]["rayStartParams"]
    assert head["num-gpus"] == "0" and head["num-cpus"] == "0"
    assert head["object-store-memory"] == "1000000000"


def test_worker_ray_start_params_and_resources_are_settable_per_group(tmp_path):
    group = {"name": "gpu-h100", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpusPerNode": 8,
             "cpu": "64", "memory": "512Gi",
             "rayStartParams": {"resources": '{"nvlink_domain": 1}', "num-cpus": "48"},
             "resources": {"rdma/ib": "1"}}
    docs = render([values_file(tmp_path, {"workerGroups": [group]})])
    (w,) = _rayservice(docs)["workerGroupSpecs"]
    assert w["rayStartParams"] == {"num-gpus": "8", "num-cpus": "48", "resources": '{"nvlink_domain": 1}'}
    res = w["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["rdma/ib"] == "1" and res["requests"]["rdma/ib"] == "1"
    assert res["limits"]["nvidia.com/gpu"] == "8"
    # The Python spec for users without Helm builds the same entry.
    python = kuberay.worker_group_spec(group)
    assert python["rayStartParams"] == w["rayStartParams"]
    assert python["template"]["spec"]["containers"][0]["resources"] == res
