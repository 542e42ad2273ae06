"""Bad requests against the real fleet: each kind gets its OpenAI-format 4xx (never a 500, never
an internal class path), and a normal request right after still succeeds."""

from __future__ import annotations

import json
import threading
import time

import requests

CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
JSON = {"Content-Type": "application/json"}


def _with(**fields):
    return json.dumps({**GOOD, **fields})


# (kind, path, body bytes or str, headers, expected status)
CASES = [
    ("malformed JSON", CHAT, "{not json", JSON, 400),
    ("text/plain body", CHAT, json.dumps(GOOD), {"Content-Type": "text/plain"}, 415),
    ("form-encoded body", CHAT, "model=tiny-random", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("empty body", CHAT, "", JSON, 400),
    ("JSON array, not an object", CHAT, "[1, 2]", JSON, 400),
    ("missing model", CHAT, json.dumps({"messages": GOOD["messages"]}), JSON, 400),
    ("unknown model", CHAT, _with(model="gpt-nope"), JSON, 404),
    ("missing messages", CHAT, json.dumps({"model": "tiny-random"}), JSON, 400),
    ("messages is a string", CHAT, _with(messages="hello"), JSON, 400),
    ("content is a number", CHAT, _with(messages=[{"role": "user", "content": 42}]), JSON, 400),
    ("role wizard", CHAT, _with(messages=[{"role": "wizard", "content": "hi"}]), JSON, 400),
    ("empty messages", CHAT, _with(messages=[]), JSON, 400),
    ("5000 messages", CHAT, _with(messages=[{"role": "user", "content": "x"}] * 5000), JSON, 400),
    ("n of 1000", CHAT, _with(n=1000), JSON, 400),
    ("max_tokens negative", CHAT, _with(max_tokens=-1), JSON, 400),
    ("max_tokens a string", CHAT, _with(max_tokens="ten"), JSON, 400),
    ("max_tokens beyond the context", CHAT, _with(max_tokens=50_000), JSON, 400),
    ("prompt beyond the context", "/v1/completions", json.dumps({"model": "tiny-random", "prompt": "word " * 3000, "max_tokens": 2}), JSON, 400),
    ("temperature negative", CHAT, _with(temperature=-1), JSON, 400),
    ("top_p above 1", CHAT, _with(top_p=2), JSON, 400),
    ("invalid UTF-8", CHAT, b'{"model": "tiny-random", "messages": [{"role": "user", "content": "\xff\xfe"}]}', JSON, 400),
    ("body over 1 MiB", CHAT, _with(messages=[{"role": "user", "content": "x" * 1_100_000}]), JSON, 413),
    ("feedback not JSON", "/v1/feedback", "nope", JSON, 400),
    ("GET on a POST endpoint", CHAT, None, {}, 405),
]


def _normal_request_works(url: str) -> None:
    r = requests.post(f"{url}{CHAT}", json=GOOD, timeout=120)
    assert r.status_code == 200 and r.json()["choices"], r.text


def test_bad_inputs_get_their_4xx_and_the_fleet_keeps_serving(fleet_url):
    wrong = []
    for kind, path, body, headers, expected in CASES:
        if body is None:
            r = requests.get(f"{fleet_url}{path}", timeout=60)
        else:
            r = requests.post(f"{fleet_url}{path}", data=body, headers=headers, timeout=120)
        text = r.text
        shape_ok = r.status_code == 405 or ("error" in r.json() and r.json()["error"].get("message"))
        if r.status_code != expected or not shape_ok or "_internal" in text or "ray.llm" in text:
            wrong.append((kind, expected, r.status_code, text[:200]))
    assert not wrong, "\n".join(map(str, wrong))
    _normal_request_works(fleet_url)


def test_absurd_headers_are_refused_without_harm(fleet_url):
    r = requests.post(f"{fleet_url}{CHAT}", json=GOOD, headers={"X-Junk": "x" * 200_000}, timeout=60)
    assert r.status_code == 431 and r.json()["error"]["type"] == "RequestHeaderFieldsTooLargeError", r.text[:300]
    _normal_request_works(fleet_url)


def test_a_client_that_stops_reading_a_stream_does_not_hurt_others(fleet_url):
    body = {**GOOD, "stream": True, "max_tokens": 200, "extra_body": None}
    body.pop("extra_body")
    r = requests.post(f"{fleet_url}{CHAT}", json={**body, "ignore_eos": True}, stream=True, timeout=120)
    assert r.status_code == 200
    next(r.iter_lines())  # read one line, then go away without reading the rest
    r.close()
    _normal_request_works(fleet_url)


def test_concurrency_limit_per_route_is_429_with_retry_after_applied_in_place(fleet, fleet_url):
    from corral.serving.app import set_admission
    from corral.serving.local import LocalCluster

    cluster = LocalCluster()
    tight = fleet.admission.model_copy(update={"routes": {"tiny-random": {"max_concurrent_requests": 1}}})
    assert cluster.update_app(fleet.name, lambda app: set_admission(app, tight.model_dump(mode="json")))
    results: list[int] = []
    try:
        deadline = time.monotonic() + 90
        got_429 = None
        while got_429 is None and time.monotonic() < deadline:  # user_config applies asynchronously
            slow = threading.Thread(target=lambda: results.append(requests.post(
                f"{fleet_url}{CHAT}", json={**GOOD, "max_tokens": 400, "ignore_eos": True}, timeout=120).status_code))
            slow.start()
            time.sleep(0.3)
            r = requests.post(f"{fleet_url}{CHAT}", json=GOOD, timeout=120)
            if r.status_code == 429:
                got_429 = r
            slow.join()
        assert got_429 is not None, "no 429 while one request was in flight on a route limited to 1"
        assert int(got_429.headers["Retry-After"]) >= 1 and "'tiny-random'" in got_429.json()["error"]["message"]
        assert set(results) == {200}
    finally:
        cluster.update_app(fleet.name, lambda app: set_admission(app, fleet.admission.model_dump(mode="json")))
    _normal_request_works(fleet_url)
