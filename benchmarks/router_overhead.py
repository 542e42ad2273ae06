"""corral's router vs the plain Ray Serve LLM OpenAI app: same model, same load, one run.

Two Serve applications run side by side: the stock `build_openai_app` (route prefix /plain) and
corral's ingress (prefix /corral, the request names a route over one arm). Each has its own
SmolLM2 engine with the identical LLMConfig, bound to the same cores: the load goes to one app at
a time (alternating who goes first each round), so each engine has the whole machine while it is
measured and neither gets a "better" core. Levels are closed-loop concurrencies, non-streaming
by default, `8:stream` for SSE (where corral reads every chunk for TTFT/ITL). Prints JSON with the
ratios the router issue targets: p50 latency ratio <= 1.02 and throughput ratio >= 0.98.

    .venv/bin/python benchmarks/router_overhead.py [--rounds 3] [--requests 24] [--levels 1 8 8:stream]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="blocks per app per level")
    parser.add_argument("--requests", type=int, default=8, help="requests per block (x concurrency/1 at c>1)")
    parser.add_argument("--levels", nargs="+", default=["1", "8:stream"],
                        help="closed-loop concurrency per level; suffix :stream for SSE")
    parser.add_argument("--control", action="store_true",
                        help="A/A control: deploy the plain app in corral's place too (same order, prefix and "
                             "cores), so the ratio shows what the harness alone does")
    args = parser.parse_args()
    levels = [(int(lv.split(":")[0]), lv.endswith(":stream")) for lv in args.levels]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from corral.commands.up import apply_fleet, run_down
    from corral.serving.app import serve_config
    from corral.serving.local import LocalCluster

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        run_down(None)
    fleet = apply_fleet(None, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr))
    cluster = LocalCluster()
    # Same fleet twice: corral's app under /corral, the plain Ray Serve LLM app under /plain with
    # the identical LLMConfig (same cores, same KV cache); only one of them is loaded at a time.
    if len(fleet.arms) != 1:
        raise SystemExit("the benchmark compares one arm; the default fleet has one")
    corral_app = serve_config(fleet, cluster.home)["applications"][0]
    corral_app.update(name="corral", route_prefix="/corral")
    from corral.serving.app import llm_config_dicts

    (plain_llm,) = llm_config_dicts(fleet, cluster.home)
    plain_llm = copy.deepcopy(plain_llm)
    plain_app = {"name": "plain", "route_prefix": "/plain", "import_path": "ray.serve.llm:build_openai_app",
                 "args": {"llm_configs": [plain_llm]}}
    if args.control:
        corral_app = {**copy.deepcopy(plain_app), "name": "corral", "route_prefix": "/corral"}
    config = {"applications": [corral_app, plain_app], "http_options": {"host": "127.0.0.1", "port": fleet.server.port}}
    r = cluster._http("PUT", "/api/serve/applications/", json=config, timeout=60)
    r.raise_for_status()
    deadline = time.monotonic() + 1200
    while not all((cluster.app_status(n) or {}).get("status") == "RUNNING" for n in ("corral", "plain")):
        if time.monotonic() > deadline:
            raise SystemExit("apps did not become healthy")
        time.sleep(3)
    base = f"http://127.0.0.1:{fleet.server.port}"
    targets = {"corral": (f"{base}/corral", fleet.arms[0].name if args.control else fleet.routes[0].name),
               "plain": (f"{base}/plain", fleet.arms[0].name)}
    try:
        for name, (url, model) in targets.items():
            run(url, model, 2, 4)  # warm-up, excluded
            run(url, model, 2, 2, stream=True)
        results: dict[str, dict[str, list[dict]]] = {n: {lv: [] for lv in args.levels} for n in targets}
        for rnd in range(args.rounds):
            for lv, (c, stream) in zip(args.levels, levels):
                order = list(targets) if rnd % 2 == 0 else list(reversed(targets))  # alternate who goes first
                for name in order:
                    url, model = targets[name]
                    n = args.requests * max(1, c // 4)  # c=8: two full waves per block
                    results[name][lv].append(run(url, model, c, n, stream=stream))
                    brief = {k: v for k, v in results[name][lv][-1].items() if k != "latencies_s"}
                    print(f"round {rnd} level {lv} {name}: {brief}", file=sys.stderr)
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            run_down(None)

    out = []
    for lv, (c, stream) in zip(args.levels, levels):
        blocks = results
        p50 = {n: round(statistics.median(x for b in blocks[n][lv] for x in b["latencies_s"]), 4) for n in targets}
        tps = {n: round(sum(b["output_tokens"] for b in blocks[n][lv]) / sum(b["wall_s"] for b in blocks[n][lv]), 3)
               for n in targets}
        # Block-pair ratios (same round) show how much the machine alone moves the numbers.
        pair = [(a, b) for a, b in zip(blocks["corral"][lv], blocks["plain"][lv])]
        p50_pairs = [a["latency_p50_s"] / b["latency_p50_s"] for a, b in pair]
        tps_pairs = [a["output_tokens_per_s"] / b["output_tokens_per_s"] for a, b in pair]
        out.append({
            "concurrency": c, "stream": stream, "requests_per_app": sum(b["requests"] for b in blocks["corral"][lv]),
            "p50_latency_s": p50, "output_tokens_per_s": tps,
            "p50_latency_ratio_corral_vs_plain": round(p50["corral"] / p50["plain"], 4),
            "throughput_ratio_corral_vs_plain": round(tps["corral"] / tps["plain"], 4),
            "per_round_p50_ratio_range": [round(min(p50_pairs), 3), round(max(p50_pairs), 3)],
            "per_round_throughput_ratio_range": [round(min(tps_pairs), 3), round(max(tps_pairs), 3)],
            "failures": {n: sum(r["failures"] for r in results[n][lv]) for n in targets},
        })
    print(json.dumps({"benchmark": "router_overhead", "control": args.control, "rounds": args.rounds, "requests_per_level": args.requests,
                      "goal": {"p50_latency_ratio_max": 1.02, "throughput_ratio_min": 0.98},
                      "levels": out, "raw": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
