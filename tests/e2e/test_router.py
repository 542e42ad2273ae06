"""Routes on the real fleet: weighted sticky split, pinning, live reweighting, feedback, metrics."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import requests
import yaml

from tests.e2e.conftest import FLEET_FILE, wait_for


def chat(url: str, model: str, user: str | None = None, max_tokens: int = 2, timeout: float = 120) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": max_tokens}
    if user:
        body["user"] = user
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def test_route_splits_by_weight_and_sticks_to_users(fleet_url):
    arms = {}
    for i in range(60):
        r = chat(fleet_url, "llama", user=f"split-user-{i}")
        assert r.status_code == 200, r.text
        arms[i] = r.headers["x-corral-arm"]
        assert r.json()["model"] == arms[i]  # the model field names the arm too
        assert r.headers["x-corral-route"] == "llama"
    counts = Counter(arms.values())
    # 50/50 over 60 users: 3 standard deviations is about +-12 users.
    assert set(counts) == {"smollm2", "tiny-random"} and min(counts.values()) >= 18, counts
    for i in range(0, 60, 6):  # the same user lands on the same arm again
        assert chat(fleet_url, "llama", user=f"split-user-{i}").headers["x-corral-arm"] == arms[i]


def test_session_header_and_pinning(fleet_url):
    body = {"model": "llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    first = requests.post(f"{fleet_url}/v1/chat/completions", json=body, headers={"x-session-id": "s-42"}, timeout=60)
    again = [requests.post(f"{fleet_url}/v1/chat/completions", json=body, headers={"x-session-id": "s-42"}, timeout=60)
             for _ in range(3)]
    assert {r.headers["x-corral-arm"] for r in again} == {first.headers["x-corral-arm"]}
    pinned = chat(fleet_url, "tiny-random", user="split-user-0")
    assert pinned.headers["x-corral-arm"] == "tiny-random" and pinned.headers["x-corral-route"] == "tiny-random"


def test_feedback_is_recorded_per_arm(fleet_url):
    r = chat(fleet_url, "llama", user="feedback-user")
    rid, arm = r.json()["id"], r.headers["x-corral-arm"]
    fb = requests.post(f"{fleet_url}/v1/feedback", json={"response_id": rid, "score": 1.0}, timeout=30)
    assert fb.status_code == 200 and fb.json()["arm"] == arm
    assert requests.post(f"{fleet_url}/v1/feedback", json={"response_id": "nope", "score": 1}, timeout=30).status_code == 404
    assert requests.post(f"{fleet_url}/v1/feedback", json={"response_id": rid, "score": 7}, timeout=30).status_code == 400


def _replica_ids(status: dict, app: str) -> dict[str, set[str]]:
    """Replica ids of every deployment of the app: the LLM servers and the ingress."""
    deployments = status["applications"][app]["deployments"]
    return {name: {r["replica_id"] for r in d.get("replicas", [])} for name, d in deployments.items()}


PHASE_REQUESTS = 30
"""Requests sent per weight phase: at 50% the share's standard deviation is ~9 points, so 25 is ~3 sd."""


def test_live_reweighting_under_load_drops_nothing(fleet, fleet_url, tmp_path):
    """Weights move 0 -> 50 -> 100 on tiny-random while clients keep calling the route."""
    from corral.serving.fleet_ops import apply_fleet
    from corral.serving.local import LocalCluster

    cluster = LocalCluster()
    replicas_before = _replica_ids(cluster.serve_status(), fleet.name)
    assert any(not name.startswith("LLMServer") for name in replicas_before), replicas_before  # the ingress too
    results: list[tuple[float, int, str | None]] = []
    attempts: list[int] = [0, 0, 0]
    failures: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 2000:  # bounded
            sent = time.monotonic()  # the arm is chosen when the request arrives, so bin by send time
            attempts[n] += 1
            try:
                r = chat(fleet_url, "llama", user=f"load-{n}-{i}", max_tokens=1)
                results.append((sent, r.status_code, r.headers.get("x-corral-arm")))
            except Exception as exc:  # a reset or timeout is a dropped request, not a dead thread
                failures.append((n, repr(exc)))
            i += 1

    def sent_since(start: float) -> int:
        return sum(1 for t, _, _ in results if t >= start)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    phases = []
    try:
        for weight in (0, 50, 100):
            spec = yaml.safe_load(Path(FLEET_FILE).read_text())
            spec["routes"][0]["arms"] = [{"arm": "smollm2", "weight": 100 - weight}, {"arm": "tiny-random", "weight": weight}]
            path = tmp_path / f"w{weight}.yaml"
            path.write_text(yaml.safe_dump(spec))
            apply_fleet(str(path), timeout_s=300, prometheus=False, say=lambda m: None)
            # Serve applies user_config asynchronously: wait until the new weights are visible.
            wait_for(lambda w=weight: requests.get(f"{fleet_url}/v1/models", timeout=30).json()["data"][0]
                      ["metadata"]["weights"].get("tiny-random") == w, 120, f"weight {weight} visible in /v1/models")
            # /v1/models answered from one ingress replica; requests sent from here on see the new weights.
            start = time.monotonic()
            wait_for(lambda s=start: sent_since(s) >= PHASE_REQUESTS, 300,
                      f"{PHASE_REQUESTS} requests at weight {weight}", poll_s=0.2)
            phases.append((weight, start, time.monotonic()))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
        apply_fleet(str(FLEET_FILE), timeout_s=300, prometheus=False, say=lambda m: None)

    assert not any(t.is_alive() for t in threads)
    assert failures == [], failures[:5]
    # Every attempt came back, and every one with 200.
    assert len(results) == sum(attempts) > 0, (len(results), attempts)
    assert all(code == 200 for _, code, _ in results), Counter(code for _, code, _ in results)
    for weight, start, end in phases:
        arms = [arm for t, _, arm in results if start <= t <= end]
        assert len(arms) >= PHASE_REQUESTS
        share = 100 * arms.count("tiny-random") / len(arms)
        if weight in (0, 100):
            assert share == weight, (weight, Counter(arms))
        else:
            assert abs(share - weight) <= 25, (weight, len(arms), share)  # stated tolerance: 25 points at 30+ requests
    # In place: no replica (LLM servers or ingress) was restarted by the weight changes.
    assert _replica_ids(cluster.serve_status(), fleet.name) == replicas_before


def test_api_keys_401_429_and_admin_scope_applied_in_place(fleet, fleet_url):
    from corral.serving.app import set_auth
    from corral.serving.auth import hash_key
    from corral.serving.local import LocalCluster

    cluster = LocalCluster()
    auth = {"enabled": True, "keys": [
        {"name": "limited", "sha256": hash_key("sk-limited"), "scopes": ["inference"], "requests_per_minute": 2},
        {"name": "ops", "sha256": hash_key("sk-ops"), "scopes": ["inference", "admin"]},
        {"name": "tokens", "sha256": hash_key("sk-tokens"), "scopes": ["inference"], "tokens_per_minute": 10},
    ]}
    body = {"model": "tiny-random", "prompt": "hi", "max_tokens": 1}

    def call(key=None, path="/v1/completions", json_body=None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if path == "/v1/completions":
            return requests.post(f"{fleet_url}{path}", json=json_body or body, headers=headers, timeout=60)
        return requests.get(f"{fleet_url}{path}", headers=headers, timeout=60)

    assert cluster.update_app(fleet.name, lambda app: set_auth(app, auth))
    try:
        deadline = time.monotonic() + 120  # generous cap; the loop ends when the condition holds
        while call().status_code != 401 and time.monotonic() < deadline:  # user_config applies asynchronously
            time.sleep(0.5)
        r = call()
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        assert call("sk-wrong").status_code == 401
        assert [call("sk-limited").status_code for _ in range(2)] == [200, 200]
        limited = call("sk-limited")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert "rate limit" in limited.json()["error"]["message"]
        # Token rate: the first request is admitted and charged its usage (30+ tokens against a
        # 10 tokens/minute budget: serving/auth.py charge_tokens lets the bucket go negative), so the
        # next one waits for the refill: 429 with a Retry-After of the time it takes.
        long_body = {"model": "tiny-random", "prompt": "hello " * 30, "max_tokens": 2}
        first = call("sk-tokens", json_body=long_body)
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 10, first.text
        over = call("sk-tokens", json_body=long_body)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["message"] == "rate limit of 10 tokens/minute exceeded for key 'tokens'"
        deficit = first.json()["usage"]["total_tokens"] - 10 + 1  # tokens missing before one is available
        assert int(over.headers["Retry-After"]) >= deficit * 60 / 10 - 60  # refill since `first` is under a minute
        assert call("sk-limited", "/v1/corral/routes").status_code == 403
        routes = call("sk-ops", "/v1/corral/routes")
        assert routes.status_code == 200 and "llama" in routes.json()["routes"]
    finally:
        cluster.update_app(fleet.name, lambda app: set_auth(app, {"enabled": False, "keys": []}))
        deadline = time.monotonic() + 120  # generous cap; the loop ends when the condition holds
        while call().status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
