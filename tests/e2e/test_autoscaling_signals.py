"""The arm replicas report vLLM's own latency, KV cache, queued prompt token and work-rate numbers to Serve's
autoscaler."""

from __future__ import annotations

import json
import subprocess
import sys

import requests

from corral.cluster import metric_names as names

# Runs in its own process: a Serve handle starts background threads in its driver that outlive
# ray.shutdown() and would break later tests that start other Ray clusters in this process.
PROBE = """
import json, sys
import ray
from ray import serve
ray.init(address="auto", log_to_driver=False, include_dashboard=False)
handle = serve.get_deployment_handle(sys.argv[1], app_name=sys.argv[2])
print(json.dumps(handle.record_autoscaling_stats.remote().result(timeout_s=60)))
"""


def test_replicas_report_engine_ttft_itl_kv_cache_and_queued_prompt_tokens(fleet, fleet_url):
    from corral.serving.app import llm_deployment_name

    for i in range(4):
        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Count to {i + 3}."}],
                "max_tokens": 8, "ignore_eos": True, "stream": i % 2 == 0}
        r = requests.post(f"{fleet_url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
    # A driver on the fleet's Ray head calls the method Serve's replica calls every
    # metrics_interval_s (record_autoscaling_stats), on the live replica.
    out = subprocess.run([sys.executable, "-c", PROBE, llm_deployment_name("smollm2"), fleet.name],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    work = (names.SIGNAL_REQUESTS_PER_S, names.SIGNAL_PROMPT_TOKENS_PER_S, names.SIGNAL_OUTPUT_TOKENS_PER_S)
    assert set(stats) == {names.SIGNAL_TTFT_P95, names.SIGNAL_ITL_P95, names.SIGNAL_KV_CACHE,
                          names.SIGNAL_QUEUED_PROMPT_TOKENS, *work}, stats
    # The work done over the signal window (20 s), per second: the 4 requests' prefills (each prompt
    # more than one token) and their decoded tokens (7 after each first token).
    requests_s, prompt_s, output_s = (stats[k] for k in work)
    assert requests_s > 0 and prompt_s > requests_s and output_s > 0, stats
    # SmolLM2 on two CPU cores: a short prompt's first token within seconds, tokens well under 1 s apart.
    assert 0 < stats[names.SIGNAL_TTFT_P95] < 30
    assert 0 < stats[names.SIGNAL_ITL_P95] < 2
    assert 0 <= stats[names.SIGNAL_KV_CACHE] <= 1
    # Every request has had its first token (they all finished): no prompt waits for its prefill.
    assert stats[names.SIGNAL_QUEUED_PROMPT_TOKENS] == 0.0
