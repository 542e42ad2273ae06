"""corral's router vs the plain Ray Serve LLM OpenAI app: same model, same load, one run.

Two Serve applications run side by side: the stock `build_openai_app` (route prefix /plain) and
corral's ingress (prefix /corral, the request names a route over one arm). Each has its own
SmolLM2 engine pinned to its own core, and the load alternates between them level by level, so
both see the same machine state. Prints JSON with the ratios the router issue targets:
p50 latency ratio <= 1.02 and throughput ratio >= 0.98.

    .venv/bin/python benchmarks/router_overhead.py [--rounds 3] [--requests 48]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=48, help="requests per level per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from corral.commands.up import apply_fleet, run_down
    from corral.serving.app import serve_config
    from corral.serving.local import LocalCluster

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        run_down(None)
    fleet = apply_fleet(None, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr))
    cluster = LocalCluster()
    # Same fleet twice: corral's app under /corral (its engine on core 0), the plain Ray Serve LLM
    # app under /plain with an identical LLMConfig (its engine on core 1).
    # One core each: corral's engine on core 0 (a one-core "node"), the plain app's on core 1.
    fleet = fleet.model_copy(update={"cluster": fleet.cluster.model_copy(update={"devices_per_node": 1})})
    corral_app = serve_config(fleet, cluster.home)["applications"][0]
    corral_app.update(name="corral", route_prefix="/corral")
    from corral.serving.app import llm_config_dicts

    (plain_llm,) = llm_config_dicts(fleet, cluster.home)
    plain_llm = copy.deepcopy(plain_llm)
    plain_llm["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    plain_app = {"name": "plain", "route_prefix": "/plain", "import_path": "ray.serve.llm:build_openai_app",
                 "args": {"llm_configs": [plain_llm]}}
    config = {"applications": [corral_app, plain_app], "http_options": {"host": "127.0.0.1", "port": fleet.server.port}}
    r = cluster._http("PUT", "/api/serve/applications/", json=config, timeout=60)
    r.raise_for_status()
    deadline = time.monotonic() + 1200
    while not all((cluster.app_status(n) or {}).get("status") == "RUNNING" for n in ("corral", "plain")):
        if time.monotonic() > deadline:
            raise SystemExit("apps did not become healthy")
        time.sleep(3)
    base = f"http://127.0.0.1:{fleet.server.port}"
    targets = {"corral": (f"{base}/corral", fleet.routes[0].name), "plain": (f"{base}/plain", fleet.arms[0].name)}
    try:
        for name, (url, model) in targets.items():
            run(url, model, 2, 4)  # warm-up, excluded
        results: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in args.concurrency} for n in targets}
        for rnd in range(args.rounds):
            for c in args.concurrency:
                order = list(targets) if rnd % 2 == 0 else list(reversed(targets))  # alternate who goes first
                for name in order:
                    url, model = targets[name]
                    results[name][c].append(run(url, model, c, args.requests))
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            run_down(None)

    def agg(rows: list[dict], key: str) -> float:
        vals = sorted(r[key] for r in rows)
        return vals[len(vals) // 2]

    levels = []
    for c in args.concurrency:
        p50 = {n: agg(results[n][c], "latency_p50_s") for n in targets}
        tps = {n: agg(results[n][c], "output_tokens_per_s") for n in targets}
        levels.append({
            "concurrency": c,
            "p50_latency_s": p50, "output_tokens_per_s": tps,
            "p50_latency_ratio_corral_vs_plain": round(p50["corral"] / p50["plain"], 4),
            "throughput_ratio_corral_vs_plain": round(tps["corral"] / tps["plain"], 4),
            "failures": {n: sum(r["failures"] for r in results[n][c]) for n in targets},
        })
    print(json.dumps({"benchmark": "router_overhead", "rounds": args.rounds, "requests_per_level": args.requests,
                      "goal": {"p50_latency_ratio_max": 1.02, "throughput_ratio_min": 0.98},
                      "levels": levels, "raw": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
