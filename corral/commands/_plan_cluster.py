"""`corral plan cluster`: how to run a Llama model on the GPUs you have.

Registered by `corral plan` (corral/commands/plan.py) through `register(plan_subparsers)`.
Prints the ranked (TP, PP) layouts, then the best one as a fleet-spec arm, its Ray placement
group and its KubeRay worker group; `--values-out` writes a Helm values overlay.
"""

from __future__ import annotations

import argparse
import json

from corral.commands._common import EXIT_BAD_INPUT, CliError


def register(plan_sub: argparse._SubParsersAction) -> None:
    p = plan_sub.add_parser(
        "cluster",
        help="TP/PP layout, memory, KV capacity, decode roofline and cost of a Llama model on a GPU cluster",
        description="Plan tensor/pipeline parallelism for a Llama model on nodes of identical GPUs. "
                    "Infeasible requests are refused with the arithmetic (exit 2).",
    )
    p.add_argument("--model", required=True, help="catalog model, e.g. llama-3-70b, llama-3.1-8b, llama-2-13b")
    p.add_argument("--gpu", required=True, dest="gpu_type", help="catalog GPU, e.g. H100-80GB, A100-80GB, L40S")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--max-model-len", type=int, default=None, help="context per sequence (default min(model, 8192))")
    p.add_argument("--concurrency", type=int, default=16,
                   help="full-length sequences each replica must hold at once (default 16)")
    p.add_argument("--avg-context", type=int, default=None, dest="avg_context_tokens",
                   help="average tokens per running sequence for the roofline (default max-model-len/2)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "fp8"])
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--overhead-gib", type=float, default=2.0, dest="runtime_overhead_gib",
                   help="per-GPU memory for activations, CUDA graphs, buffers (default 2)")
    p.add_argument("--price", type=float, default=None, dest="gpu_hourly_usd",
                   help="USD per GPU hour (default: catalog list price)")
    p.add_argument("--tp", type=int, action="append", dest="tensor_parallel_sizes", help="only this TP (repeatable)")
    p.add_argument("--pp", type=int, action="append", dest="pipeline_parallel_sizes", help="only this PP (repeatable)")
    p.add_argument("--top", type=int, default=5, help="layouts to list (default 5)")
    p.add_argument("--fleet-name", default="corral", help="fleet name in the emitted spec/values")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--values-out", default=None, metavar="FILE",
                   help="write a Helm values overlay (fleet + workerGroups) for helm/corral")
    p.set_defaults(func=cmd_cluster)


REQUEST_FIELDS = (
    "model", "gpu_type", "gpus_per_node", "nodes", "max_model_len", "concurrency", "avg_context_tokens",
    "dtype", "kv_cache_dtype", "gpu_memory_utilization", "runtime_overhead_gib", "gpu_hourly_usd",
    "tensor_parallel_sizes", "pipeline_parallel_sizes",
)
# CLI flag of each request field, for error messages.
FLAGS = {"gpu_type": "--gpu", "avg_context_tokens": "--avg-context", "runtime_overhead_gib": "--overhead-gib",
         "gpu_hourly_usd": "--price", "tensor_parallel_sizes": "--tp", "pipeline_parallel_sizes": "--pp"}


def command_line(args: argparse.Namespace) -> str:
    """The `corral plan cluster` invocation that reproduces this plan (for generated files)."""
    words = ["corral plan cluster"]
    for field in REQUEST_FIELDS + ("fleet_name",):
        value = getattr(args, field)
        if value is None:
            continue
        flag = "--fleet-name" if field == "fleet_name" else _flag(field)
        for v in value if isinstance(value, list) else [value]:
            words.append(f"{flag} {v}")
    return " ".join(words)


def _flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def build_request(args: argparse.Namespace):
    from pydantic import ValidationError

    from corral.cluster.planner import PlanRequest

    data = {k: getattr(args, k) for k in REQUEST_FIELDS}
    try:
        return PlanRequest(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            where = _flag(str(err["loc"][0])) if err["loc"] else "request"
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise CliError("invalid plan request\n  " + "\n  ".join(lines), EXIT_BAD_INPUT) from None


def _gib(n: float) -> str:
    from corral.cluster.catalog import GiB

    return f"{n / GiB:.1f}"


def table(plan, top: int) -> str:
    head = ("TP", "PP", "repl", "GPUs", "wts GiB/GPU", "mem GiB/GPU", "usable", "max seqs",
            "ITL ms", "tok/s cluster", "1-seq tok/s", "$/h", "Mtok/$")
    rows = [head]
    for c in plan.candidates[:top]:
        rows.append((
            str(c.tp), str(c.pp), str(c.replicas), f"{c.gpus_used}/{c.gpus_used + c.gpus_idle}",
            _gib(c.weights_per_gpu_bytes), _gib(c.memory_per_gpu_bytes), _gib(c.usable_per_gpu_bytes),
            str(c.max_concurrent_seqs), f"{c.decode_step_s * 1e3:.1f}", f"{c.cluster_tokens_per_s:,.0f}",
            f"{c.single_stream_tokens_per_s:.0f}", f"{c.cost_per_hour_usd:.2f}", f"{c.tokens_per_usd / 1e6:.2f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def plan_json(plan, values: dict) -> dict:
    from dataclasses import asdict

    return {
        "request": plan.request.model_dump(),
        "candidates": [asdict(c) for c in plan.candidates],
        "rejected": [asdict(r) for r in plan.rejected],
        "best": {
            "arm": plan.arm(),
            "placement_group": {"bundles": plan.best.bundles(), "strategy": plan.best.placement_strategy},
            "values": values,
        },
    }


def cmd_cluster(args: argparse.Namespace) -> int:
    import yaml

    from corral.cluster import kuberay
    from corral.cluster.planner import InfeasiblePlan, plan_cluster

    request = build_request(args)
    try:
        plan = plan_cluster(request)
    except InfeasiblePlan as exc:
        raise CliError(str(exc), EXIT_BAD_INPUT) from None
    values = kuberay.helm_values(plan, args.fleet_name)
    if args.values_out:
        header = (f"# Generated by: {command_line(args)}\n"
                  f"# {request.arch.hf_id} on {request.nodes} x {request.gpus_per_node} {request.gpu_type}: "
                  f"TP={plan.best.tp} PP={plan.best.pp}, {plan.best.replicas} replica(s)\n")
        with open(args.values_out, "w") as f:
            f.write(header + yaml.safe_dump(values, sort_keys=False))
    if args.json:
        print(json.dumps(plan_json(plan, values), indent=2))
        return 0
    r, best = request, plan.best
    arch = r.arch
    print(f"{arch.name}: {arch.num_params / 1e9:.2f} B params, {arch.weight_bytes(r.weight_dtype_bytes) / 1e9:.1f} GB "
          f"in {r.dtype}; KV cache {arch.kv_bytes_per_token(r.kv_dtype_bytes) // 1024} KiB/token")
    print(f"cluster: {r.nodes} node(s) x {r.gpus_per_node} {r.gpu_type} ({r.gpu.memory_gib:.1f} GiB, "
          f"{r.gpu.bandwidth_gb_s:g} GB/s, ${r.price:.2f}/h); max_model_len={r.context_len}, "
          f"concurrency={r.concurrency}, avg context {r.avg_context}")
    print()
    print(table(plan, args.top))
    print()
    print(f"best: TP={best.tp} x PP={best.pp}, {best.replicas} replica(s), stages on nodes {list(best.stage_nodes)}; "
          f"decode roofline ({best.bound}-bound) {best.replica_tokens_per_s:,.0f} tok/s per replica at "
          f"batch {best.max_num_seqs}")
    for note in best.notes:
        print(f"note: {note}")
    print("\n# fleet-spec arm")
    print(yaml.safe_dump([plan.arm()], sort_keys=False).rstrip())
    print("\n# Ray placement group per replica")
    print(yaml.safe_dump({"bundles": best.bundles(), "strategy": best.placement_strategy},
                         sort_keys=False, default_flow_style=None).rstrip())
    print("\n# KubeRay worker group (Helm value workerGroups[0])")
    print(yaml.safe_dump(values["workerGroups"], sort_keys=False).rstrip())
    if args.values_out:
        print(f"\nwrote Helm values to {args.values_out}")
    return 0
