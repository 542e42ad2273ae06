"""Placement of planned replicas on a Ray cluster, checked before anything is deployed.

A planned layout (`planner.Candidate`) asks for one placement group per replica: TP x PP
bundles of one GPU each. vLLM's Ray executor orders a replica's workers node by node and
gives consecutive ranks to one TP group, so a layout is placed correctly when every node
holds whole TP groups (a multiple of TP bundles) and, for PP > 1 spread over nodes, the
stages land on as many nodes as planned.

* `fit_on_nodes(candidate, free_gpus)` is pure: can the replicas' TP groups be packed into
  the nodes' free GPUs at all? It answers with the reason when they cannot.
* `check_plan(candidate)` runs on a live Ray cluster: the pure check against the nodes' free
  GPUs first, then it reserves every replica's placement group for real, reads where each
  bundle landed, verifies it against the plan and releases the reservations. Nothing is
  deployed; a plan that cannot be placed is reported here, not by a stuck deploy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from corral.cluster.planner import Candidate, ClusterPlan

# Ray labels each GPU node with this resource (value 1); a bundle asking for a sliver of it
# lands only on that GPU type, as Ray Serve LLM's `accelerator_type` does.
ACCELERATOR_RESOURCE = "accelerator_type:{}"


class PlacementError(RuntimeError):
    """The plan cannot be placed on this cluster; the message says why."""


@dataclass(frozen=True)
class ReplicaPlacement:
    """Where one replica's bundles landed."""

    bundle_nodes: tuple[str, ...]
    """Node id of each bundle, in bundle order."""
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.bundle_nodes))


@dataclass(frozen=True)
class PlacementReport:
    replicas: tuple[ReplicaPlacement, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.replicas)

    @property
    def problems(self) -> list[str]:
        return [f"replica {i}: {p}" for i, r in enumerate(self.replicas) for p in r.problems]


def fit_on_nodes(candidate: Candidate, free_gpus: dict[str, float]) -> list[str]:
    """Pure capacity check: pack TP groups (TP GPUs on one node) for every replica, first fit
    on the fullest node. Returns the problems ([] when all replicas fit)."""
    tp, needed = candidate.tp, candidate.replicas * candidate.pp
    groups = {node: int(gpus) // tp for node, gpus in free_gpus.items()}
    available = sum(groups.values())
    if available >= needed:
        return []
    per_node = ", ".join(f"{n[:8]}: {free_gpus[n]:g} GPU" for n in sorted(free_gpus)) or "no nodes of that GPU type"
    return [
        f"{candidate.replicas} replica(s) x PP={candidate.pp} need {needed} TP group(s) of {tp} GPUs "
        f"on one node each; the cluster's free GPUs ({per_node}) hold {available}"
    ]


def verify_bundles(candidate: Candidate, bundle_nodes: list[str]) -> list[str]:
    """Check one replica's landed bundles against the plan."""
    tp, pp = candidate.tp, candidate.pp
    problems = []
    if len(bundle_nodes) != tp * pp:
        return [f"{len(bundle_nodes)} bundles placed, {tp * pp} planned"]
    # vLLM forms TP groups from each node's workers: every node must hold whole TP groups.
    for node, count in Counter(bundle_nodes).items():
        if count % tp:
            problems.append(f"node {node[:8]} holds {count} workers, not a multiple of TP={tp}: "
                            "a tensor-parallel group would span nodes")
    planned_nodes = len(set(candidate.stage_nodes[0]))
    landed = len(set(bundle_nodes))
    if landed != planned_nodes:
        problems.append(f"stages landed on {landed} node(s), planned {planned_nodes} "
                        f"(stage nodes {list(candidate.stage_nodes[0])})")
    return problems


def replica_bundles(plan: ClusterPlan, candidate: Candidate | None = None,
                    cpus_per_worker: float = 1.0) -> list[dict[str, float]]:
    """One replica's placement group bundles, pinned to the planned GPU type."""
    c = candidate or plan.best
    accel = ACCELERATOR_RESOURCE.format(plan.request.gpu.ray_accelerator_type)
    return [{**b, accel: 0.001} for b in c.bundles(cpus_per_worker)]


def _free_gpus(accelerator_resource: str) -> dict[str, float]:
    import ray

    free: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive") and accelerator_resource in node.get("Resources", {}):
            free[node["NodeID"]] = 0.0
    # Available (not total) resources: what is left after other placement groups and actors.
    # The public API has no per-node availability (see serving/_ray_compat.py).
    from corral.serving._ray_compat import available_resources_per_node

    for node_id, res in available_resources_per_node().items():
        if node_id in free:
            free[node_id] = float(res.get("GPU", 0.0))
    return free


def check_plan(plan: ClusterPlan, candidate: Candidate | None = None, timeout_s: float = 30.0,
               cpus_per_worker: float = 1.0) -> PlacementReport:
    """Reserve the plan's placement groups on the connected Ray cluster, verify where they
    landed, release them. Raises PlacementError when the plan cannot be placed."""
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    candidate = candidate or plan.best
    bundles = replica_bundles(plan, candidate, cpus_per_worker)
    accel = ACCELERATOR_RESOURCE.format(plan.request.gpu.ray_accelerator_type)
    problems = fit_on_nodes(candidate, _free_gpus(accel))
    if problems:
        raise PlacementError("; ".join(problems))
    groups, results = [], []
    try:
        for i in range(candidate.replicas):
            pg = placement_group(bundles, strategy=candidate.placement_strategy,
                                 name=f"corral-placement-check-{i}")
            groups.append(pg)
            if not pg.wait(timeout_seconds=timeout_s):
                raise PlacementError(
                    f"replica {i}: placement group of {len(bundles)} {plan.request.gpu_type} bundles "
                    f"({candidate.placement_strategy}) not schedulable within {timeout_s:g}s")
            table = placement_group_table(pg)
            nodes = [table["bundles_to_node_id"][b] for b in range(len(bundles))]
            results.append(ReplicaPlacement(tuple(nodes), tuple(verify_bundles(candidate, nodes))))
    finally:
        for pg in groups:
            remove_placement_group(pg)
    return PlacementReport(tuple(results))
