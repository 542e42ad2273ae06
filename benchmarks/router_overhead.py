"""corral's router vs the plain Ray Serve LLM OpenAI app: same model, same load, one run.

`--engine shared` (default) isolates the router: corral's application runs the engine, and Ray
Serve LLM's stock `OpenAiIngress` (`_shared_ingress.py`, prefix /plain) sends to that same
LLMServer replica, so the two paths differ only in the ingress. `--engine separate` compares
whole applications (corral's vs `build_openai_app`), each with its own engine with the identical
LLMConfig, bound to the same cores; two engine instances differ by several percent on their own
here, so it cannot resolve 2% (see benchmarks/results/router_overhead-swap-2026-12-01.json).
The load goes to one path at a time.

Drift (other processes, the scheduler) is designed out: at one request at a time the paths take
turns request by request (`_load.alternating`); at higher concurrency block by block, the first
alternating each round. With separate engines `--phases 2` (the default there) redeploys halfway
with fresh engines and the apps' order exchanged; the per-phase ratios show the slot effect
(slot factor = sqrt(phase 1 ratio / phase 2 ratio)) and the slot-cancelled ratios remove it.

Levels are closed-loop concurrencies, non-streaming by default, `8:stream` for SSE (where corral
reads every chunk for TTFT/ITL). Prints JSON with the ratios the router goal names: p50
latency ratio <= 1.02 and throughput ratio >= 0.98. `--control` puts a second plain ingress
(shared) or the plain app (separate) in corral's place (A/A): its ratios show what the harness
alone does.

    .venv/bin/python benchmarks/router_overhead.py [--engine shared] [--rounds 4] [--requests 8] [--levels 1 8:stream]

The defaults give an estimate in minutes; an interval inside 2% took, on two CPU cores, `--levels 1
--rounds 40 --requests 5` (200 request pairs, ~30 min) and `--levels 8:stream --rounds 50 --requests 4`
(50 one-wave block pairs, ~33 min): short blocks give more pairs and less drift inside each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import alternating, run  # noqa: E402

APPS = ("corral", "plain")
GOAL = {"p50_latency_ratio_max": 1.02, "throughput_ratio_min": 0.98}  # the router goal


def deploy(cluster, apps: dict[str, dict], order: tuple[str, ...], port: int, timeout_s: float = 1200) -> None:
    """Delete every Serve app (so the engines start afresh), then deploy `apps` in `order`, each
    one RUNNING before the next is added (a shared-engine ingress needs its engine's app)."""
    cluster.delete_apps()
    deadline = time.monotonic() + timeout_s
    while (cluster.serve_status() or {}).get("applications"):
        if time.monotonic() > deadline:
            raise SystemExit("old apps did not go away")
        time.sleep(2)
    for k in range(1, len(order) + 1):
        config = {"applications": [apps[n] for n in order[:k]], "http_options": {"host": "127.0.0.1", "port": port}}
        r = cluster._http("PUT", "/api/serve/applications/", json=config, timeout=60)
        if not r.ok:
            raise SystemExit(f"Serve rejected the deploy ({r.status_code}): {r.text[:1000]}")
        while (cluster.app_status(order[k - 1]) or {}).get("status") != "RUNNING":
            if time.monotonic() > deadline:
                raise SystemExit(f"app {order[k - 1]!r} did not become healthy")
            time.sleep(3)


def pooled(blocks: list[dict]) -> tuple[float, float]:
    """(p50 latency over every request, output tokens per second over every block's wall time)."""
    p50 = statistics.median(x for b in blocks for x in b["latencies_s"])
    return p50, sum(b["output_tokens"] for b in blocks) / sum(b["wall_s"] for b in blocks)


def paired_ratio(ratios: list[float]) -> dict:
    """Geometric mean of paired ratios (same round, or neighbouring requests) with a 95% t interval
    on their logarithms (`corral.common.stats.geometric_mean_ci`): drift between rounds cancels
    inside each pair, which pooling every request does not do. One pair gives no interval: [0, inf]."""
    from corral.common.stats import geometric_mean_ci

    e = geometric_mean_ci(ratios)
    low = 0.0 if e.low is None else e.low
    high = math.inf if e.high is None else e.high
    return {"ratio": round(e.value, 4), "ci95": [round(low, 4), round(high, 4)], "pairs": e.n}


def summarize(level: str, blocks: dict[str, list[dict]]) -> dict:
    """Ratios corral/plain for one level; blocks carry `phase` (0, 1, ...) and pair up by index."""
    (p50_c, tps_c), (p50_p, tps_p) = pooled(blocks["corral"]), pooled(blocks["plain"])
    c, stream = int(level.split(":")[0]), level.endswith(":stream")
    phases = sorted({b["phase"] for b in blocks["corral"]})
    per_phase = []
    for ph in phases:
        (pc, tc), (pp, tp) = (pooled([b for b in blocks[n] if b["phase"] == ph]) for n in APPS)
        slot = next(b["slot"] for b in blocks["corral"] if b["phase"] == ph)
        per_phase.append({"phase": ph, "corral_slot": slot, "p50_latency_ratio": round(pc / pp, 4),
                          "throughput_ratio": round(tc / tp, 4)})
    pairs = list(zip(blocks["corral"], blocks["plain"]))
    out = {
        "concurrency": c, "stream": stream, "interleaved_per_request": c == 1,
        "requests_per_app": sum(b["requests"] for b in blocks["corral"]),
        "p50_latency_s": {"corral": round(p50_c, 4), "plain": round(p50_p, 4)},
        "output_tokens_per_s": {"corral": round(tps_c, 3), "plain": round(tps_p, 3)},
        "p50_latency_ratio_corral_vs_plain": round(p50_c / p50_p, 4),
        "throughput_ratio_corral_vs_plain": round(tps_c / tps_p, 4),
        "per_phase": per_phase,
        # Block-pair ratios (same round) show how much the machine alone moves the numbers.
        "per_round_p50_ratio_range": [round(f(a["latency_p50_s"] / b["latency_p50_s"] for a, b in pairs), 3) for f in (min, max)],
        "per_round_throughput_ratio_range": [
            round(f(a["output_tokens_per_s"] / b["output_tokens_per_s"] for a, b in pairs), 3) for f in (min, max)],
        "failures": {n: sum(b["failures"] for b in blocks[n]) for n in APPS},
    }
    # The verdict: paired ratios. Request by request where the apps took turns (and none failed),
    # else block by block; throughput block by block (its blocks are the busy time of each app).
    seq = [(a.get("sequence_s"), b.get("sequence_s")) for a, b in pairs]
    if all(x and y and len(x) == len(y) for x, y in seq):
        p50_pairs = [u / v for x, y in seq for u, v in zip(x, y)]
    else:
        p50_pairs = [a["latency_p50_s"] / b["latency_p50_s"] for a, b in pairs]
    paired_p50 = paired_ratio(p50_pairs)
    paired_tps = paired_ratio([a["output_tokens_per_s"] / b["output_tokens_per_s"] for a, b in pairs])
    out["paired"] = {"latency_ratio": paired_p50, "throughput_ratio": paired_tps,
                     "goal_met_at_95pct": paired_p50["ci95"][1] <= GOAL["p50_latency_ratio_max"]
                     and paired_tps["ci95"][0] >= GOAL["throughput_ratio_min"],
                     "goal_met_by_estimate": paired_p50["ratio"] <= GOAL["p50_latency_ratio_max"]
                     and paired_tps["ratio"] >= GOAL["throughput_ratio_min"]}
    if len(per_phase) == 2 and per_phase[0]["corral_slot"] != per_phase[1]["corral_slot"]:
        first = next(p for p in per_phase if p["corral_slot"] == 0)
        second = next(p for p in per_phase if p["corral_slot"] == 1)
        # ratio(phase) = router x slot^(+-1): the geometric mean cancels the slot, the quotient isolates it.
        out["slot_factor_p50"] = round(math.sqrt(first["p50_latency_ratio"] / second["p50_latency_ratio"]), 4)
        out["p50_latency_ratio_slot_cancelled"] = round(math.sqrt(first["p50_latency_ratio"] * second["p50_latency_ratio"]), 4)
        out["throughput_ratio_slot_cancelled"] = round(math.sqrt(first["throughput_ratio"] * second["throughput_ratio"]), 4)
    return out


def layout(fleet, home: Path, engine: str, control: bool) -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """(Serve apps by name, the app each target is, the model each target's requests name)."""
    from corral.serving.app import llm_config_dicts, llm_deployment_name, serve_config

    arm, route = fleet.arms[0].name, fleet.routes[0].name
    (llm,) = llm_config_dicts(fleet, home)
    corral_app = {**serve_config(fleet, home)["applications"][0], "name": "corral", "route_prefix": "/corral"}
    if engine == "shared":
        def plain(name: str) -> dict:
            return {"name": name, "route_prefix": f"/{name}", "import_path": "_shared_ingress:build",
                    # A Serve config takes a local folder only as local:// (one machine here).
                    "runtime_env": {"working_dir": f"local://{Path(__file__).resolve().parent}"},
                    "args": {"llm_config": copy.deepcopy(llm), "app_name": "corral",
                             "deployment": llm_deployment_name(arm)}}
        apps = {"corral": corral_app, "plain": plain("plain")}
        if control:
            apps["twin"] = plain("twin")
        return apps, {"corral": "twin" if control else "corral", "plain": "plain"}, {
            "corral": arm if control else route, "plain": arm}
    plain_app = {"name": "plain", "route_prefix": "/plain", "import_path": "ray.serve.llm:build_openai_app",
                 "args": {"llm_configs": [copy.deepcopy(llm)]}}
    if control:
        corral_app = {**copy.deepcopy(plain_app), "name": "corral", "route_prefix": "/corral"}
    return {"corral": corral_app, "plain": plain_app}, {"corral": "corral", "plain": "plain"}, {
        "corral": arm if control else route, "plain": arm}


def stat_logger_cost_us(calls: int = 100_000) -> float:
    """What corral adds on the engine side, which a shared engine leaves out of the comparison:
    `EngineSignals.record`, called by vLLM once per engine iteration (µs per call, with a TTFT
    sample in every call, more than a real iteration carries)."""
    from vllm.v1.metrics.stats import IterationStats, SchedulerStats

    from corral.serving.llm_server import EngineSignals

    signals, scheduler, iteration = EngineSignals(), SchedulerStats(kv_cache_usage=0.5), IterationStats()
    iteration.time_to_first_tokens_iter.append(0.1)
    start = time.perf_counter()
    for _ in range(calls):
        signals.record(scheduler, iteration)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("shared", "separate"), default="shared",
                        help="shared: both ingresses over corral's engine (the router alone); separate: whole apps, "
                             "one engine each")
    parser.add_argument("--phases", type=int, default=None,
                        help="deployments, each with fresh engines; with separate engines the apps' order alternates "
                             "between them (default: 1 shared, 2 separate)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per phase (one block per app and level each)")
    parser.add_argument("--requests", type=int, default=8,
                        help="requests per app per block (x concurrency/4 at c>4)")
    parser.add_argument("--levels", nargs="+", default=["1", "8:stream"],
                        help="closed-loop concurrency per level; suffix :stream for SSE")
    parser.add_argument("--control", action="store_true",
                        help="A/A control: a plain ingress (shared) or app (separate) in corral's place, so the "
                             "ratios show what the harness alone does")
    args = parser.parse_args()
    phases = args.phases or (1 if args.engine == "shared" else 2)
    if phases < 1 or args.rounds < 1 or args.requests < 1:
        parser.error("--phases, --rounds and --requests must be >= 1")
    levels = [(lv, int(lv.split(":")[0]), lv.endswith(":stream")) for lv in args.levels]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from corral.serving.fleet_ops import apply_fleet, stop_fleet
    from corral.serving.local import LocalCluster

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        stop_fleet()
    fleet = apply_fleet(None, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr))
    if len(fleet.arms) != 1:
        raise SystemExit("the benchmark compares one arm; the default fleet has one")
    cluster = LocalCluster()
    apps, app_of, model_of = layout(fleet, cluster.home, args.engine, args.control)
    base = f"http://127.0.0.1:{fleet.server.port}"
    targets = {t: (f"{base}{apps[app_of[t]]['route_prefix']}", model_of[t]) for t in APPS}
    results: dict[str, dict[str, list[dict]]] = {n: {lv: [] for lv, _, _ in levels} for n in APPS}
    try:
        for phase in range(phases):
            order = tuple(apps)  # a shared engine's app comes first
            if args.engine == "separate" and phase % 2:
                order = order[::-1]
            print(f"phase {phase}: deploying {order} (fresh engines)", file=sys.stderr)
            deploy(cluster, apps, order, fleet.server.port)
            for url, model in targets.values():
                run(url, model, 2, 4)  # warm-up, excluded
                run(url, model, 2, 2, stream=True)
            for rnd in range(args.rounds):
                for lv, c, stream in levels:
                    if c == 1:
                        got = asyncio.run(alternating(targets, args.requests, stream=stream))
                    else:
                        got = {}
                        for name in (APPS if rnd % 2 == 0 else APPS[::-1]):
                            url, model = targets[name]
                            got[name] = run(url, model, c, args.requests * max(1, c // 4), stream=stream)
                    for name, block in got.items():
                        slot = order.index(app_of[name])
                        results[name][lv].append({**block, "phase": phase, "slot": slot, "round": rnd})
                        brief = {k: v for k, v in block.items() if k != "latencies_s"}
                        print(f"phase {phase} round {rnd} level {lv} {name}: {brief}", file=sys.stderr)
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            stop_fleet()

    summary = [summarize(lv, {n: results[n][lv] for n in APPS}) for lv, _, _ in levels]
    engine_side = None
    if args.engine == "shared":
        # At the lowest level (one request at a time) an engine iteration makes about one output token.
        low = min(range(len(levels)), key=lambda i: levels[i][1])
        token_s = sum(b["wall_s"] for b in results["plain"][levels[low][0]]) / sum(
            b["output_tokens"] for b in results["plain"][levels[low][0]])
        cost_us = stat_logger_cost_us()
        engine_side = {"stat_logger_us_per_iteration": round(cost_us, 2),
                       "plain_s_per_output_token": round(token_s, 4),
                       "fraction_of_a_token": cost_us * 1e-6 / token_s}
    print(json.dumps({"benchmark": "router_overhead", "engine": args.engine, "control": args.control,
                      "phases": phases, "rounds_per_phase": args.rounds, "requests_per_block": args.requests,
                      "goal": GOAL,
                      "levels": summary, "engine_side": engine_side, "raw": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
