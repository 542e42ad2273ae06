"""Catalog figures against published numbers, and the planner's arithmetic and choices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from corral.cluster import catalog
from corral.cluster.catalog import GB, GiB, KiB
from corral.cluster.planner import (
    InfeasiblePlan,
    PlanRequest,
    plan_cluster,
    stage_layers,
    valid_tensor_parallel_sizes,
)
from corral.cluster.spec import Arm, parse_fleet


@pytest.mark.parametrize("name", list(catalog.MODELS))
def test_parameter_count_matches_model_card(name):
    m = catalog.MODELS[name]
    # Derived from the architecture, compared with the count the model card publishes.
    assert m.num_params / 1e9 == pytest.approx(m.published_params_b, abs=0.006)


def test_llama3_70b_published_figures():
    m = catalog.model("llama-3-70b")
    assert m.weight_bytes(2) / GB == pytest.approx(141.1, abs=0.05)  # ≈ 141 GB in bf16
    assert m.kv_bytes_per_token(2) == 2 * 80 * 8 * 128 * 2 == 320 * KiB
    assert m.head_dim == 128


def test_kv_cache_per_token_other_models():
    # Llama 2 7B has no GQA: 2·32·32·128·2 B = 512 KiB; Llama 3 8B: 2·32·8·128·2 B = 128 KiB.
    assert catalog.model("llama-2-7b").kv_bytes_per_token() == 512 * KiB
    assert catalog.model("llama-2-13b").kv_bytes_per_token() == 800 * KiB
    assert catalog.model("llama-3-8b").kv_bytes_per_token() == 128 * KiB
    assert catalog.model("llama-3.1-70b").max_position_embeddings == 131072


def test_gpu_catalog_datasheet_figures():
    assert catalog.gpu("h100-80gb").bandwidth_gb_s == 3350
    assert catalog.gpu("A100-40GB").memory_gib == pytest.approx(40.0)
    assert catalog.gpu("H200-141GB").memory_bytes / GB == pytest.approx(150.8, abs=0.1)  # 141 GiB-ish, 143771 MiB
    assert set(catalog.GPUS) == {"A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "L40S", "A10G"}


def test_unknown_names_list_the_known_ones():
    with pytest.raises(catalog.CatalogError, match="known: llama-2-7b"):
        catalog.model("llama-4")
    with pytest.raises(ValidationError, match="unknown GPU type 'V100'"):
        PlanRequest(model="llama-3-8b", gpu_type="V100")


def test_70b_on_one_40gb_gpu_is_refused_with_the_arithmetic():
    req = PlanRequest(model="llama-3-70b", gpu_type="A100-40GB", gpus_per_node=1, nodes=1)
    with pytest.raises(InfeasiblePlan) as exc:
        plan_cluster(req)
    msg = str(exc.value)
    assert "141.1 GB" in msg and "TP=1 x PP=1" in msg
    assert "0.9 x 40.0 GiB = 36.0 GiB" in msg
    assert "131.4 GiB per GPU" in msg  # 141.1e9 B / 2^30


def test_kv_shortfall_is_refused_with_the_kv_arithmetic():
    # 8B fits one A10G (15 GiB of weights in 20.2 GiB usable) but not 16 x 8192-token sequences.
    req = PlanRequest(model="llama-3-8b", gpu_type="A10G", gpus_per_node=1, nodes=1, concurrency=16)
    with pytest.raises(InfeasiblePlan, match=r"KV cache for 16 x 8192 tokens x 128 KiB/token"):
        plan_cluster(req)


def test_70b_tp8_on_one_h100_node():
    plan = plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="H100-80GB", gpus_per_node=8, nodes=1))
    best = plan.best
    assert (best.tp, best.pp, best.replicas) == (8, 1, 1)
    assert best.weights_per_gpu_bytes == pytest.approx(141.1e9 / 8, rel=0.001)
    # KV space: 0.9·81559 MiB − 16.4 GiB weights − 2 GiB overhead per GPU, over 8 GPUs, 320 KiB/token.
    free = 0.9 * 81559 * 2**20 - best.weights_per_gpu_bytes - 2 * GiB
    assert best.kv_capacity_tokens == pytest.approx(8 * free / (320 * KiB), rel=0.001)
    assert best.max_concurrent_seqs == best.kv_capacity_tokens // 8192
    # Roofline at one sequence: 141.1 GB + 4096 tokens of KV read per step over 8 x 3.35 TB/s.
    one = (141.1075e9 + 4096 * 320 * KiB) / (8 * 3.35e12)
    assert best.single_stream_tokens_per_s == pytest.approx(1 / one, rel=0.001)
    assert best.placement_strategy == "STRICT_PACK" and best.stage_nodes == ((0,),)


def test_70b_tp4_pp2_across_two_a100_nodes_when_concurrency_demands_it():
    # At 64 full-length sequences TP=4 alone cannot hold the KV cache (59 fit); TP4 x PP2 can.
    req = PlanRequest(model="llama-3-70b", gpu_type="A100-80GB", gpus_per_node=4, nodes=2, concurrency=64)
    plan = plan_cluster(req)
    best = plan.best
    assert (best.tp, best.pp, best.replicas) == (4, 2, 1)
    assert best.stage_layers == (40, 40)
    assert best.stage_nodes == ((0, 1),) and best.placement_strategy == "PACK"
    assert any(r.tp == 4 and r.pp == 1 and "holds 59 full-length" in r.reason for r in plan.rejected)


def test_more_gpus_per_replica_only_wins_when_it_buys_batch():
    # 8B on 2 x 8 H100: TP=1 already holds a big batch; the top plan uses every GPU.
    plan = plan_cluster(PlanRequest(model="llama-3-8b", gpu_type="H100-80GB", gpus_per_node=8, nodes=2))
    assert plan.best.gpus_idle == 0
    ranked = [c.tokens_per_usd for c in plan.candidates]
    assert ranked == sorted(ranked, reverse=True)


def test_tp_must_divide_heads_and_fit_a_node():
    assert valid_tensor_parallel_sizes(catalog.model("llama-3-70b"), 8) == [1, 2, 4, 8]
    assert valid_tensor_parallel_sizes(catalog.model("llama-2-13b"), 8) == [1, 2, 4, 5, 8]
    with pytest.raises(InfeasiblePlan, match="TP must divide the 64 attention heads and 8 KV heads"):
        plan_cluster(PlanRequest(model="llama-3-70b", gpu_type="H100-80GB", gpus_per_node=8,
                                 tensor_parallel_sizes=[3]))


def test_stage_layers_follow_vllm_split():
    assert stage_layers(80, 2) == (40, 40)
    assert stage_layers(80, 3) == (27, 27, 26)
    assert stage_layers(32, 5) == (6, 6, 7, 7, 6)  # remainder to middle stages, not first/last


def test_request_validation_quotes_bad_values():
    with pytest.raises(ValidationError, match="max_model_len=9000 is longer than llama-2-7b's context \\(4096"):
        PlanRequest(model="llama-2-7b", gpu_type="A10G", max_model_len=9000)
    with pytest.raises(ValidationError, match="gpu_memory_utilization"):
        PlanRequest(model="llama-2-7b", gpu_type="A10G", gpu_memory_utilization=1.5)


def test_planned_arm_is_a_valid_fleet_arm():
    req = PlanRequest(model="llama-3-70b", gpu_type="A100-80GB", gpus_per_node=4, nodes=2,
                      tensor_parallel_sizes=[4], pipeline_parallel_sizes=[2])
    plan = plan_cluster(req)
    arm = Arm.model_validate(plan.arm())
    assert arm.engine.tensor_parallel_size == 4 and arm.engine.pipeline_parallel_size == 2
    fleet = parse_fleet({"name": "big", "cluster": {"device": "gpu", "nodes": 2, "devices_per_node": 4,
                                                      "gpu_type": "A100-80GB"},
                         "arms": [plan.arm()]})
    # What Ray detects on an A100 node, whatever its memory (tests/unit/test_kuberay_placement.py).
    assert fleet.arms[0].placement.accelerator_type == "A100"


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(list(catalog.MODELS)),
    gpu=st.sampled_from(list(catalog.GPUS)),
    gpus_per_node=st.sampled_from([1, 2, 4, 8]),
    nodes=st.integers(1, 4),
    concurrency=st.integers(1, 64),
)
def test_every_candidate_respects_the_memory_budget(model, gpu, gpus_per_node, nodes, concurrency):
    req = PlanRequest(model=model, gpu_type=gpu, gpus_per_node=gpus_per_node, nodes=nodes,
                      concurrency=concurrency, max_model_len=4096)
    # Memory the request needs over the whole cluster: all weights, KV for `concurrency` full-length
    # sequences, and the runtime overhead on every GPU, against gpu_memory_utilization x all GPUs.
    gpus = gpus_per_node * nodes
    need = (req.arch.weight_bytes(req.weight_dtype_bytes)
            + req.arch.kv_bytes_per_token(req.kv_dtype_bytes) * concurrency * req.context_len
            + req.runtime_overhead_gib * GiB * gpus)
    usable = req.gpu_memory_utilization * req.gpu.memory_bytes * gpus
    try:
        plan = plan_cluster(req)
    except InfeasiblePlan as exc:
        assert exc.rejected and all(r.reason for r in exc.rejected)
        # A refusal must be earned: whatever fits in half the cluster's memory has a layout (uneven
        # stages and the embedding on stage 0 cost less than 2x on every grid point; checked over all
        # 2016 model x GPU x 1-8 GPUs/node x 1-4 nodes x concurrency {1, 8, 64} requests).
        assert need > 0.5 * usable, (need / usable, str(exc))
        return
    assert need <= usable  # no plan conjures memory
    for c in plan.candidates:
        assert c.memory_per_gpu_bytes <= c.usable_per_gpu_bytes
        assert c.max_concurrent_seqs >= concurrency
        assert c.gpus_used <= nodes * gpus_per_node
        assert all(len(s) == c.pp for s in c.stage_nodes) and len(c.stage_nodes) == c.replicas
        assert max(n for s in c.stage_nodes for n in s) < nodes
