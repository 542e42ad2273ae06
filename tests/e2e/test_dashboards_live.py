"""Every Grafana panel's PromQL, evaluated against the live Prometheus scraping the running fleet.

No Grafana server runs here; the dashboards' queries are what could silently break (a renamed
metric or label), so each one must evaluate and return series after real traffic. Panels that
select only 5xx responses can have no series on a healthy fleet; for those, the metric they
select must still exist with the same labels. Panels on shadow series (`ray_corral_shadow_*`)
are empty outside a rollout's shadow stage, which this test does not run: they must evaluate
(tests/e2e/test_shadow.py checks the shadow series themselves on a live shadow stage).
"""

import re
import time

import requests

from corral.cluster.dashboards import panel_queries


def _query(prom: str, expr: str) -> list:
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=15)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_every_panel_has_series(fleet_url, prometheus_url):
    # Traffic through a route (both arms), streamed (TTFT/ITL) and with feedback.
    for i in range(6):
        body = {"model": "llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "user": f"dash-{i}", "stream": i % 2 == 0}
        r = requests.post(f"{fleet_url}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200
        if not body["stream"]:
            requests.post(f"{fleet_url}/v1/feedback", json={"response_id": r.json()["id"], "score": 0.5}, timeout=30)
    queries = [(q.dashboard, q.panel, q.resolved()) for q in panel_queries()]
    assert len(queries) >= 20
    missing = queries
    # A few scrapes, so that rate() over 1m has two points; run first on a fresh fleet, 120 s was not enough
    # once (every panel empty: the engines' and the ingress's first exports had not been scraped yet).
    deadline = time.monotonic() + 300
    while missing and time.monotonic() < deadline:
        time.sleep(5)
        missing = []
        for dash, panel, expr in queries:
            if _query(prometheus_url, expr) or "ray_corral_shadow_" in expr:
                continue
            if 'status=~"5.."' in expr:
                # No errors happened: check the selected metric exists with the other labels.
                metric = re.search(r"(ray_[a-z_]+)\{", expr).group(1)
                if _query(prometheus_url, f"count({metric})"):
                    continue
            missing.append((dash, panel, expr))
    assert not missing, missing
