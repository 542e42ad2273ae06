"""The arm replicas report vLLM's own latency and KV cache numbers to Serve's autoscaler."""

from __future__ import annotations

import requests

from corral.cluster import metric_names as names


def test_replicas_report_engine_ttft_itl_and_kv_cache(fleet, fleet_url):
    import ray
    from ray import serve

    from corral.serving.app import llm_deployment_name

    for i in range(4):
        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Count to {i + 3}."}],
                "max_tokens": 8, "ignore_eos": True, "stream": i % 2 == 0}
        r = requests.post(f"{fleet_url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
    # A driver on the fleet's Ray head calls the method Serve's replica calls every
    # metrics_interval_s (record_autoscaling_stats), on the live replica.
    ray.init(address="auto", log_to_driver=False, include_dashboard=False)
    try:
        handle = serve.get_deployment_handle(llm_deployment_name("smollm2"), app_name=fleet.name)
        stats = handle.record_autoscaling_stats.remote().result(timeout_s=60)
    finally:
        ray.shutdown()
    assert set(stats) == {names.SIGNAL_TTFT_P95, names.SIGNAL_ITL_P95, names.SIGNAL_KV_CACHE}, stats
    # SmolLM2 on two CPU cores: a short prompt's first token within seconds, tokens well under 1 s apart.
    assert 0 < stats[names.SIGNAL_TTFT_P95] < 30
    assert 0 < stats[names.SIGNAL_ITL_P95] < 2
    assert 0 <= stats[names.SIGNAL_KV_CACHE] <= 1
