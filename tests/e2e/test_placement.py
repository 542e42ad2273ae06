"""Planned placement groups on a real multi-node Ray cluster (logical GPUs, no vLLM).

Two layouts from the planner, on `ray.cluster_utils.Cluster` nodes that advertise GPUs as
logical resources: Llama 3 70B TP=4 x PP=2 across two 4-GPU nodes (each TP group inside a
node, the stages on different nodes) and TP=8 on one 8-GPU node. A plan bigger than the
cluster is refused before anything is reserved; one that the free GPUs cannot hold (another
placement group already took them) is refused by the pure capacity check too.
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from corral.cluster.placement import PlacementError, check_plan, fit_on_nodes
from corral.cluster.planner import PlanRequest, plan_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _detected(gpu: str) -> str:
    """The `accelerator_type:<X>` resource Ray puts on a node with this catalog GPU."""
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    from corral.cluster.catalog import gpu as catalog_gpu

    kind = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(catalog_gpu(gpu).nvml_name)
    return f"accelerator_type:{kind}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    # A private temp dir: ray_current_cluster must not point other sessions' `address="auto"` here.
    tmp = tempfile.mkdtemp(prefix="crl-", dir="/tmp")
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    mp.setenv("RAY_TMPDIR", tmp)
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Head with no GPUs and no ports shared with the fleet on 6379/8265/8000.
    cluster = Cluster(shutdown_at_exit=True)
    try:
        # Nodes carry the label Ray itself would put on real GPU nodes: Ray's detection applied to the
        # NVML device name (ray/_private/accelerators/nvidia_gpu.py, _gpu_name_to_accelerator_type),
        # not the catalog's value, so a catalog type Ray never reports cannot schedule here either.
        a100, h100 = {_detected("A100-80GB"): 1}, {_detected("H100-80GB"): 1}
        nodes = {
            "a100-0": cluster.add_node(num_cpus=4, num_gpus=4, resources=a100, gcs_server_port=_free_port(),
                                       include_dashboard=False, dashboard_port=_free_port(), temp_dir=tmp),
            "a100-1": cluster.add_node(num_cpus=4, num_gpus=4, resources=a100),
            "h100-0": cluster.add_node(num_cpus=8, num_gpus=8, resources=h100),
        }
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster, {name: n.node_id for name, n in nodes.items()}
    finally:
        ray.shutdown()
        cluster.shutdown()
        mp.undo()


def _pp2_plan():
    return plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="A100-80GB", gpus_per_node=4, nodes=2,
                                    concurrency=64))


def test_tp4_pp2_lands_one_tp_group_per_node(ray_cluster):
    _, node_ids = ray_cluster
    plan = _pp2_plan()
    assert (plan.best.tp, plan.best.pp, plan.best.stage_nodes) == (4, 2, ((0, 1),))
    report = check_plan(plan, timeout_s=60)
    assert report.ok, report.problems
    (replica,) = report.replicas
    # Each stage's 4 bundles share one node; the two stages sit on two different nodes.
    stages = [set(replica.bundle_nodes[s * 4:(s + 1) * 4]) for s in range(2)]
    assert all(len(s) == 1 for s in stages), replica.bundle_nodes
    assert len(stages[0] | stages[1]) == 2
    # The accelerator label keeps PACK off the 8-GPU H100 node (which would hold all 8 bundles).
    assert set(replica.nodes) == {node_ids["a100-0"], node_ids["a100-1"]}


def test_tp8_lands_inside_one_node(ray_cluster):
    _, node_ids = ray_cluster
    plan = plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="H100-80GB", gpus_per_node=8, nodes=1))
    assert (plan.best.tp, plan.best.pp, plan.best.placement_strategy) == (8, 1, "STRICT_PACK")
    report = check_plan(plan, timeout_s=60)
    assert report.ok, report.problems
    assert report.replicas[0].nodes == (node_ids["h100-0"],)


def test_plan_larger_than_the_cluster_is_refused_before_reserving(ray_cluster):
    from ray.util.placement_group import placement_group_table

    plan = plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="H100-80GB", gpus_per_node=8, nodes=3))
    assert plan.best.replicas == 3
    seen = set(placement_group_table())
    with pytest.raises(PlacementError, match=r"3 replica\(s\) x PP=1 need 3 TP group\(s\) of 8 GPUs"):
        check_plan(plan, timeout_s=10)
    assert set(placement_group_table()) == seen  # refused before any reservation


def test_gpus_taken_by_others_make_the_plan_unplaceable(ray_cluster):
    from ray.util.placement_group import placement_group, remove_placement_group

    # Someone holds 2 GPUs on each A100 node: 4 GPUs free, but no node has a whole TP group of 4.
    accel = {_detected("A100-80GB"): 0.001}
    others = placement_group([{"GPU": 2, **accel}, {"GPU": 2, **accel}], strategy="STRICT_SPREAD")
    assert others.wait(timeout_seconds=30)
    try:
        with pytest.raises(PlacementError, match=r"need 2 TP group\(s\) of 4 GPUs .* hold 0"):
            check_plan(_pp2_plan(), timeout_s=10)
    finally:
        remove_placement_group(others)


def test_capacity_check_is_pure_and_names_the_shortfall():
    plan = _pp2_plan().best
    assert fit_on_nodes(plan, {"n1": 4, "n2": 4}) == []
    (problem,) = fit_on_nodes(plan, {"n1": 4, "n2": 3})
    assert "need 2 TP group(s) of 4 GPUs" in problem and "hold 1" in problem
