"""Per-arm series reach a real Prometheus (scraping Ray's metrics) with the right counts."""

import time

import requests

from corral.cluster import metric_names as mn


def _value(prom: str, query: str) -> float:
    r = requests.get(f"{prom}/api/v1/query", params={"query": query}, timeout=10).json()
    return sum(float(s["value"][1]) for s in r["data"]["result"])


def test_per_arm_series_count_known_traffic(fleet_url, prometheus_url):
    requests_q = f'sum({mn.exported(mn.REQUESTS)}{{route="tiny-random",arm="tiny-random",status="200"}})'
    tokens_q = f'sum({mn.exported(mn.OUTPUT_TOKENS)}{{route="tiny-random",arm="tiny-random"}})'
    ttft_q = f'sum({mn.exported(mn.TTFT)}_count{{route="tiny-random",arm="tiny-random"}})'
    before = (_value(prometheus_url, requests_q), _value(prometheus_url, tokens_q), _value(prometheus_url, ttft_q))
    n = 7
    for i in range(n):
        body = {"model": "tiny-random", "prompt": "hello", "max_tokens": 3, "stream": i % 2 == 0, "ignore_eos": True}
        r = requests.post(f"{fleet_url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200
        _ = r.content  # drain the stream
    want = (before[0] + n, before[1] + 3 * n, before[2] + (n + 1) // 2)  # TTFT only from streams
    # Ray exports every few seconds and Prometheus scrapes every 5 s: wait for the exact counts, with
    # a generous cap (a loaded 2-core machine delays exports), then report what was there.
    deadline = time.monotonic() + 300
    while True:
        got = (_value(prometheus_url, requests_q), _value(prometheus_url, tokens_q), _value(prometheus_url, ttft_q))
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert got == want, {"before": before, "want": want, "got": got}
    # Latency histograms and token counters exist for both arms of the route after traffic.
    for series in (mn.LATENCY + "_count", mn.INPUT_TOKENS):
        assert _value(prometheus_url, f"sum({mn.exported(series)})") > 0
