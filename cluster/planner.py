"""Cluster planner: how to run a Llama model on the GPUs you have.

`plan_cluster(request)` is a pure function. For every tensor-parallel degree TP that divides
the attention and KV heads and fits inside one node, and every pipeline degree PP (layers
split into stages, stages may sit on different nodes), it works out:

* weights per GPU: the heaviest pipeline stage (its layers, plus the embedding on the first
  stage and the LM head on the last, as vLLM splits them) divided by TP;
* memory per GPU: weights + runtime overhead (activations, CUDA graphs, NCCL buffers) + the KV
  cache for `concurrency` sequences of `max_model_len` tokens, all within
  `gpu_memory_utilization` of the GPU (the budget vLLM itself honours);
* the largest number of full-length sequences the KV cache holds (vLLM's `max_num_seqs`);
* a decode roofline: one decode step reads every weight and the KV cache of every running
  sequence once. A batch passes the PP stages one after another, so TP multiplies bandwidth
  and PP adds memory but not speed (conservative: ignores micro-batch pipelining and
  communication). step = max(bytes / (TP · bandwidth), 2 · params · batch / (TP · FLOPS));
* replicas: TP groups per node × nodes, PP groups per replica;
* cost and decode tokens per dollar, the ranking key.

A request nothing satisfies raises `InfeasiblePlan` whose message carries the arithmetic of
every (TP, PP) tried, e.g. why Llama 3 70B bf16 cannot fit one 40 GB GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.cluster import catalog
from corral.cluster.catalog import GB, GiB, GpuType, ModelArch

# vLLM's default upper bound on a running batch; planning past it buys nothing.
VLLM_MAX_NUM_SEQS_CAP = 256


class PlanRequest(BaseModel):
    """What to plan: a model on a cluster of identical GPU nodes, and the serving needs."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    model: str
    """Catalog model name (see `corral.cluster.catalog.MODELS`), e.g. `llama-3-70b`."""
    gpu_type: str
    """Catalog GPU name (see `corral.cluster.catalog.GPUS`), e.g. `H100-80GB`."""
    gpus_per_node: int = Field(8, ge=1)
    """GPUs in each node."""
    nodes: int = Field(1, ge=1)
    """Nodes in the cluster."""
    max_model_len: int | None = Field(None, ge=16)
    """Longest prompt + completion in tokens; None = min(model context, 8192)."""
    concurrency: int = Field(16, ge=1)
    """Sequences of `max_model_len` tokens each replica must hold in its KV cache at once."""
    avg_context_tokens: int | None = Field(None, ge=1)
    """Average tokens in a running sequence's KV cache during decode (roofline only);
    None = half of `max_model_len`."""
    dtype: Literal["bfloat16", "float16", "fp8"] = "bfloat16"
    """Weight dtype (fp8 = pre-quantized weights, 1 byte each)."""
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    """KV cache dtype; `auto` = the weight dtype (2 bytes for bf16/fp16)."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Share of each GPU's memory vLLM may use; the rest is left for other processes."""
    runtime_overhead_gib: float = Field(2.0, ge=0.0)
    """Memory per GPU that is neither weights nor KV cache (activation peak, CUDA graphs,
    NCCL and allocator buffers), inside the `gpu_memory_utilization` budget."""
    gpu_hourly_usd: float | None = Field(None, ge=0.0)
    """Price of one GPU hour; None = the catalog's default for the GPU type."""
    tensor_parallel_sizes: list[int] | None = None
    """Only consider these TP degrees (None = every valid one)."""
    pipeline_parallel_sizes: list[int] | None = None
    """Only consider these PP degrees (None = 1 up to what the cluster holds)."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return catalog.model(value).name

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        return catalog.gpu(value).name

    @field_validator("tensor_parallel_sizes", "pipeline_parallel_sizes")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(v < 1 for v in value)):
            raise ValueError(f"must be a non-empty list of positive integers, got {value}")
        return value

    @model_validator(mode="after")
    def _context(self) -> PlanRequest:
        arch = catalog.model(self.model)
        if self.max_model_len is not None and self.max_model_len > arch.max_position_embeddings:
            raise ValueError(
                f"max_model_len={self.max_model_len} is longer than {arch.name}'s context "
                f"({arch.max_position_embeddings} tokens)"
            )
        return self

    @property
    def arch(self) -> ModelArch:
        return catalog.model(self.model)

    @property
    def gpu(self) -> GpuType:
        return catalog.gpu(self.gpu_type)

    @property
    def context_len(self) -> int:
        if self.max_model_len is not None:
            return self.max_model_len
        return min(self.arch.max_position_embeddings, 8192)

    @property
    def avg_context(self) -> int:
        return self.avg_context_tokens or max(1, self.context_len // 2)

    @property
    def weight_dtype_bytes(self) -> int:
        return catalog.DTYPE_BYTES[self.dtype]

    @property
    def kv_dtype_bytes(self) -> int:
        return 1 if self.kv_cache_dtype == "fp8" else self.weight_dtype_bytes

    @property
    def price(self) -> float:
        return self.gpu.hourly_usd if self.gpu_hourly_usd is None else self.gpu_hourly_usd


@dataclass(frozen=True)
class Candidate:
    """One feasible (TP, PP) layout with its memory, speed and cost figures."""

    tp: int
    pp: int
    replicas: int
    """Replicas the cluster holds with this layout."""
    stage_layers: tuple[int, ...]
    """Decoder layers per pipeline stage (vLLM's split)."""
    weights_per_gpu_bytes: int
    """Weights on the most loaded GPU (the stage needing most weights + KV)."""
    overhead_per_gpu_bytes: int
    kv_per_gpu_bytes: int
    """KV cache the requested concurrency needs on that GPU."""
    usable_per_gpu_bytes: int
    """gpu_memory_utilization × GPU memory."""
    kv_capacity_tokens: int
    """Tokens the replica's KV cache holds (limited by its tightest stage)."""
    max_concurrent_seqs: int
    """Full-length (`max_model_len`) sequences that fit the KV cache at once."""
    max_num_seqs: int
    """Engine batch limit planned: max_concurrent_seqs capped at vLLM's default 256."""
    decode_step_s: float
    """Roofline time of one decode step at `max_num_seqs` sequences (= inter-token latency)."""
    replica_tokens_per_s: float
    cluster_tokens_per_s: float
    single_stream_tokens_per_s: float
    """Roofline decode speed of one lone sequence."""
    bound: Literal["memory", "compute"]
    gpus_used: int
    gpus_idle: int
    cost_per_hour_usd: float
    tokens_per_usd: float
    placement_strategy: Literal["STRICT_PACK", "PACK"]
    stage_nodes: tuple[tuple[int, ...], ...]
    """Planned node index of every pipeline stage, per replica (TP groups never span nodes)."""
    notes: tuple[str, ...] = ()

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def memory_per_gpu_bytes(self) -> int:
        return self.weights_per_gpu_bytes + self.overhead_per_gpu_bytes + self.kv_per_gpu_bytes

    def bundles(self, cpus_per_worker: float = 1.0) -> list[dict[str, float]]:
        """Ray placement group bundles of one replica: one GPU worker per bundle."""
        return [{"CPU": cpus_per_worker, "GPU": 1} for _ in range(self.gpus_per_replica)]


@dataclass(frozen=True)
class Rejection:
    """A (TP, PP) layout that was tried and does not work, with the arithmetic why."""

    tp: int
    pp: int
    reason: str


@dataclass(frozen=True)
class ClusterPlan:
    request: PlanRequest
    candidates: tuple[Candidate, ...]
    """Feasible layouts, best (most decode tokens per dollar) first."""
    rejected: tuple[Rejection, ...] = field(default=())

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def arm(self, name: str | None = None, candidate: Candidate | None = None) -> dict[str, Any]:
        """The fleet-spec arm (a plain dict, valid for `corral.cluster.spec.Arm`) of a layout."""
        c = candidate or self.best
        r, arch = self.request, self.request.arch
        engine: dict[str, Any] = {
            "dtype": "float16" if r.dtype == "float16" else "bfloat16",
            "max_model_len": r.context_len,
            "max_num_seqs": c.max_num_seqs,
            "tensor_parallel_size": c.tp,
            "pipeline_parallel_size": c.pp,
            "gpu_memory_utilization": r.gpu_memory_utilization,
        }
        if r.kv_cache_dtype == "fp8":
            engine["extra"] = {"kv_cache_dtype": "fp8"}
        return {
            "name": name or arch.name,
            "description": f"{arch.hf_id} TP={c.tp} PP={c.pp} on {r.gpu_type} (planned by corral plan cluster)",
            "model": {"hf": arch.hf_id},
            "engine": engine,
            "placement": {"strategy": c.placement_strategy, "accelerator_type": r.gpu.ray_accelerator_type},
            "replicas": {"min": 1, "max": c.replicas},
        }


class InfeasiblePlan(ValueError):
    """No layout fits; the message shows the arithmetic for each one tried."""

    def __init__(self, request: PlanRequest, rejected: list[Rejection]):
        self.request = request
        self.rejected = rejected
        head = (
            f"{request.arch.name} ({request.dtype}) cannot be served on {request.nodes} node(s) x "
            f"{request.gpus_per_node} {request.gpu_type} with max_model_len={request.context_len}, "
            f"concurrency={request.concurrency}:"
        )
        super().__init__("\n".join([head] + [f"  TP={r.tp} PP={r.pp}: {r.reason}" for r in rejected]))


def stage_layers(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers per pipeline stage as vLLM splits them (`get_pp_indices`): an even share each,
    the remainder going one by one to the stages before the last (which holds the LM head)."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return tuple(parts)


def valid_tensor_parallel_sizes(arch: ModelArch, gpus_per_node: int) -> list[int]:
    """TP degrees that divide the attention and KV heads and fit inside one node."""
    return [
        tp for tp in range(1, gpus_per_node + 1)
        if arch.num_attention_heads % tp == 0 and arch.num_key_value_heads % tp == 0
    ]


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _evaluate(r: PlanRequest, tp: int, pp: int) -> Candidate | Rejection:
    arch, gpu = r.arch, r.gpu
    wb, kb = r.weight_dtype_bytes, r.kv_dtype_bytes
    groups_per_node = r.gpus_per_node // tp
    replicas = (groups_per_node * r.nodes) // pp
    if replicas == 0:
        return Rejection(tp, pp, f"needs {tp * pp} GPUs in TP groups of {tp}; the cluster has "
                                 f"{groups_per_node * r.nodes} such group(s) ({r.nodes} node(s) x {r.gpus_per_node} GPUs)")
    layers = stage_layers(arch.num_hidden_layers, pp)
    usable = int(r.gpu_memory_utilization * gpu.memory_bytes)
    overhead = int(r.runtime_overhead_gib * GiB)
    kv_token_layer_gpu = 2 * (arch.num_key_value_heads // tp) * arch.head_dim * kb  # one layer, one token
    stage_weights, stage_tokens = [], []
    for s, n in enumerate(layers):
        params = n * arch.layer_params
        if s == 0:
            params += arch.embedding_params
        if s == pp - 1:
            params += arch.head_params
        w = params * wb // tp  # the vocabulary-parallel embedding and head shard over TP too
        stage_weights.append(w)
        stage_tokens.append(max(0, usable - w - overhead) // (n * kv_token_layer_gpu))
    weights = max(stage_weights)
    if weights + overhead > usable:
        return Rejection(tp, pp, (
            f"weights {arch.weight_bytes(wb) / GB:.1f} GB over TP={tp} x PP={pp} = {_gib(weights)} per GPU "
            f"(heaviest stage) + overhead {_gib(overhead)} = {_gib(weights + overhead)} > usable "
            f"{r.gpu_memory_utilization:g} x {gpu.memory_gib:.1f} GiB = {_gib(usable)}"))
    capacity = min(stage_tokens)
    kv_token_total = arch.kv_bytes_per_token(kb)
    need_tokens = r.concurrency * r.context_len
    max_seqs = capacity // r.context_len
    tight = min(range(pp), key=lambda s: stage_tokens[s])
    kv_needed_gpu = need_tokens * layers[tight] * kv_token_layer_gpu
    if max_seqs < r.concurrency:
        free = usable - stage_weights[tight] - overhead
        return Rejection(tp, pp, (
            f"KV cache for {r.concurrency} x {r.context_len} tokens x {kv_token_total // 1024} KiB/token "
            f"over TP={tp} x PP={pp} = {_gib(kv_needed_gpu)} per GPU, but only "
            f"{_gib(usable)} - weights {_gib(stage_weights[tight])} - overhead {_gib(overhead)} = {_gib(free)} is free "
            f"(holds {max_seqs} full-length sequence(s))"))
    # The most loaded GPU (weights + KV for the requested concurrency) is what the table shows.
    stage_kv = [need_tokens * n * kv_token_layer_gpu for n in layers]
    loaded = max(range(pp), key=lambda s: stage_weights[s] + stage_kv[s])
    batch = min(max_seqs, VLLM_MAX_NUM_SEQS_CAP)
    bw = gpu.bandwidth_gb_s * 1e9
    flops = gpu.bf16_tflops * 1e12

    def step(b: int) -> tuple[float, Literal["memory", "compute"]]:
        mem_t = (arch.weight_bytes(wb) + b * r.avg_context * kv_token_total) / (tp * bw)
        cmp_t = 2 * arch.num_params * b / (tp * flops)
        return (mem_t, "memory") if mem_t >= cmp_t else (cmp_t, "compute")

    step_s, bound = step(batch)
    replica_tps = batch / step_s
    gpus_used = replicas * tp * pp
    cost = gpus_used * r.price
    cluster_tps = replicas * replica_tps
    per_usd = cluster_tps * 3600 / cost if cost > 0 else float("inf")
    # Replica k's stage s takes TP group k*PP+s; groups are numbered node by node.
    stage_nodes = tuple(tuple((k * pp + s) // groups_per_node for s in range(pp)) for k in range(replicas))
    notes = []
    if tp > 1 and not gpu.nvlink:
        notes.append(f"{gpu.name} has no NVLink: TP={tp} all-reduces go over PCIe, expect well below the roofline")
    if max_seqs > VLLM_MAX_NUM_SEQS_CAP:
        notes.append(f"KV cache holds {max_seqs} sequences; batch capped at {VLLM_MAX_NUM_SEQS_CAP}")
    return Candidate(
        tp=tp, pp=pp, replicas=replicas, stage_layers=layers,
        weights_per_gpu_bytes=stage_weights[loaded], overhead_per_gpu_bytes=overhead,
        kv_per_gpu_bytes=stage_kv[loaded],
        usable_per_gpu_bytes=usable, kv_capacity_tokens=capacity,
        max_concurrent_seqs=max_seqs, max_num_seqs=batch,
        decode_step_s=step_s, replica_tokens_per_s=replica_tps, cluster_tokens_per_s=cluster_tps,
        single_stream_tokens_per_s=1 / step(1)[0], bound=bound,
        gpus_used=gpus_used, gpus_idle=r.nodes * r.gpus_per_node - gpus_used,
        cost_per_hour_usd=cost, tokens_per_usd=per_usd,
        placement_strategy="STRICT_PACK" if pp == 1 or tp * pp <= r.gpus_per_node else "PACK",
        stage_nodes=stage_nodes, notes=tuple(notes),
    )


def plan_cluster(request: PlanRequest) -> ClusterPlan:
    """Every feasible (TP, PP) layout, ranked by decode tokens per dollar (then lower latency,
    then fewer GPUs per replica). Raises InfeasiblePlan when none fits."""
    arch = request.arch
    valid_tp = valid_tensor_parallel_sizes(arch, request.gpus_per_node)
    rejected: list[Rejection] = []
    tps = valid_tp
    if request.tensor_parallel_sizes is not None:
        tps = [t for t in request.tensor_parallel_sizes if t in valid_tp]
        for t in request.tensor_parallel_sizes:
            if t not in valid_tp:
                rejected.append(Rejection(t, 1, (
                    f"TP must divide the {arch.num_attention_heads} attention heads and "
                    f"{arch.num_key_value_heads} KV heads and be at most gpus_per_node={request.gpus_per_node}; "
                    f"valid: {valid_tp}")))
    candidates: list[Candidate] = []
    for tp in tps:
        groups = (request.gpus_per_node // tp) * request.nodes
        max_pp = min(arch.num_hidden_layers, groups)
        pps = request.pipeline_parallel_sizes or range(1, max_pp + 1)
        for pp in pps:
            if pp > arch.num_hidden_layers:
                rejected.append(Rejection(tp, pp, f"more stages than the model's {arch.num_hidden_layers} layers"))
                continue
            result = _evaluate(request, tp, pp)
            if isinstance(result, Candidate):
                candidates.append(result)
            else:
                rejected.append(result)
    if not candidates:
        raise InfeasiblePlan(request, rejected)
    candidates.sort(key=lambda c: (-c.tokens_per_usd, c.decode_step_s, c.gpus_per_replica))
    return ClusterPlan(request=request, candidates=tuple(candidates), rejected=tuple(rejected))
