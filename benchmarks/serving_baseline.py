"""Baseline of the demo fleet: output tokens/s and p50/p95 latency at concurrency 1, 8 and 32.

Deploys the embedded demo fleet with `corral up`'s code path (stopping any running fleet), then
prints JSON. Later benchmarks compare against these numbers as ratios measured in one run.

    .venv/bin/python benchmarks/serving_baseline.py [--requests-per-level 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests-per-level", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="leave the fleet running afterwards")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from corral.serving.fleet_ops import apply_fleet, stop_fleet

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        stop_fleet()
    fleet = apply_fleet(None, timeout_s=1200, prometheus=False, say=lambda m: print(m, file=sys.stderr))
    url = f"http://127.0.0.1:{fleet.server.port}"
    model = fleet.routes[0].name
    try:
        run(url, model, 2, 4, args.max_tokens)  # warm-up, excluded
        levels = [run(url, model, c, max(args.requests_per_level, c), args.max_tokens) for c in (1, 8, 32)]
    finally:
        if not args.keep:
            with contextlib.redirect_stdout(sys.stderr):
                stop_fleet()
    print(json.dumps({
        "benchmark": "serving_baseline", "fleet": fleet.name, "model": model, "max_tokens": args.max_tokens,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "levels": levels,
        "throughput_ratio_32_vs_1": round(levels[2]["output_tokens_per_s"] / levels[0]["output_tokens_per_s"], 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
