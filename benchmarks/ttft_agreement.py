"""Client-measured TTFT vs the server's own TTFT histogram, on a running fleet (goal: within 5%).

Runs `corral loadtest` (closed loop, concurrency 1) against BASE_URL and compares the mean
client TTFT with the mean of the router's `ray_corral_ttft_seconds` histogram over exactly
the same requests (delta of _sum/_count scraped from Ray's metrics endpoint). vLLM's own
`ray_vllm_time_to_first_token_seconds` (engine arrival to first token) is shown beside it.
The gap is what lies outside the ingress: the client's HTTP stack and Serve's proxy hop.

    .venv/bin/python benchmarks/ttft_agreement.py [--base-url http://127.0.0.1:8000] [--model llama] [--input-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from corral.cluster.metric_names import TTFT, exported
from corral.loadtests.report import read_records


def totals(metrics_url: str, name: str) -> tuple[float, float]:
    s = c = 0.0
    for line in requests.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith(name + "_sum"):
            s += float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count"):
            c += float(line.rsplit(" ", 1)[1])
    return s, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="llama")
    ap.add_argument("--metrics-url", default="http://127.0.0.1:8080/metrics")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--input-tokens", type=int, default=128, help="prompt tokens (loadtest's default)")
    ap.add_argument("--output-tokens", type=int, default=16)
    args = ap.parse_args()
    name = exported(TTFT)
    engine = "ray_vllm_time_to_first_token_seconds"
    s0, c0 = totals(args.metrics_url, name)
    e0 = totals(args.metrics_url, engine)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--base-url", args.base_url, "--model", args.model,
               "--out", out, "--mode", "closed", "--concurrency", "1", "--duration", "120", "--warmup", "0",
               "--max-requests", str(args.requests), "--no-calibrate", "--input-tokens", str(args.input_tokens),
               "--output-tokens", str(args.output_tokens)]
        subprocess.run(cmd, check=True, capture_output=True)
        records = [r for r in read_records(Path(out) / "requests.jsonl") if r.ok]
    deadline = time.monotonic() + 60
    while True:
        s1, c1 = totals(args.metrics_url, name)
        if c1 - c0 >= len(records) or time.monotonic() > deadline:
            break
        time.sleep(2)
    server = (s1 - s0) / (c1 - c0)
    e1 = totals(args.metrics_url, engine)
    engine_mean = (e1[0] - e0[0]) / (e1[1] - e0[1]) if e1[1] > e0[1] else None
    client = sum(r.ttft_s for r in records) / len(records)
    print(json.dumps({"benchmark": "ttft_agreement", "requests": len(records), "server_counted": c1 - c0,
                      "input_tokens": args.input_tokens,
                      "input_tokens_measured_mean": sum(r.input_tokens or 0 for r in records) / len(records),
                      "client_mean_ttft_s": round(client, 4), "server_mean_ttft_s": round(server, 4),
                      "engine_mean_ttft_s": round(engine_mean, 4) if engine_mean else None,
                      "engine_counted": e1[1] - e0[1],
                      "gap_ms": round((client - server) * 1000, 1),
                      "ratio_client_vs_server": round(client / server, 4), "goal_max_relative_gap": 0.05,
                      "met": abs(client / server - 1) <= 0.05}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
