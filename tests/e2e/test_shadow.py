"""Shadow traffic on the real fleet: route `tiny` (tiny-random 100 / tiny-random-tp2 0) copies 50%
of its users' requests to tiny-random-tp2 while every user is answered by tiny-random.

The shadow setting goes the way a rollout's shadow stage sends it: `LocalServeActuator.set_shadow`
edits the ingress's user_config through Serve's REST API, and the ingress applies it in place
(`reconfigure`). Prometheus must then show the candidate's shadow series
(`ray_corral_shadow_*`), one copy or one drop for each shadowed user (`corral.serving.shadow.shadowed`
decides which), and no change to its user series. The fleet is left as it was found (shadow off).

The setting carries one golden rule, for the prompt every user sends, that no answer meets (an
exact answer the random-weight model cannot give): every answered copy must be scored, and scored
`fail`, in `ray_corral_shadow_golden_total` (the golden subset's path from the rollout's golden
set to Prometheus; the scoring rules themselves are unit-tested).
"""

from __future__ import annotations

import time

import pytest
import requests

from corral.cluster import metric_names as mn
from corral.rollout.actuators import ActuatorError, LocalServeActuator
from corral.rollout.quality import GoldenPrompt, golden_rules
from corral.serving.prometheus import PrometheusClient
from corral.serving.shadow import shadowed
from tests.e2e.conftest import wait_for

ROUTE, BASE, CAND = "tiny", "tiny-random", "tiny-random-tp2"
PROMPT = "hello " * 8
GOLDEN = golden_rules([GoldenPrompt(id="never", prompt=PROMPT.strip(), answers=("corral-never-says-this",),
                                    match="exact")])
SETTING = {"arm": CAND, "percent": 50.0, "max_in_flight": 4, "timeout_s": 120.0, "golden": GOLDEN}
N = 40


def read(get, cap_s: float = 60):
    """What Serve's REST status says, retried while the dashboard does not answer (it misses its
    10 s read timeout now and then on two busy cores) or the ingress is applying a change (None)."""
    last: list[str] = ["no answer yet"]

    def attempt():
        try:
            value = get()
            last[0] = "the ingress is applying a change" if value is None else ""
            return None if value is None else (value,)
        except ActuatorError as exc:
            last[0] = str(exc)
            return None

    try:
        return wait_for(attempt, cap_s, "Serve's status", poll_s=1)[0]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last[0]}") from None


def total(prom: PrometheusClient, name: str, arm: str, extra: str = "") -> float:
    sel = f'route="{ROUTE}",arm="{arm}"' + (f",{extra}" if extra else "")
    return prom.query(f"sum({mn.exported(name)}{{{sel}}}) or vector(0)") or 0.0


def counts(prom: PrometheusClient) -> dict[str, float]:
    return {
        "user_cand": total(prom, mn.REQUESTS, CAND),
        "user_cand_tokens": total(prom, mn.OUTPUT_TOKENS, CAND),
        "user_base": total(prom, mn.REQUESTS, BASE),
        "shadow_cand": total(prom, mn.SHADOW_REQUESTS, CAND),
        "shadow_cand_ok": total(prom, mn.SHADOW_REQUESTS, CAND, 'status="200"'),
        "shadow_dropped": total(prom, mn.SHADOW_DROPPED, CAND),
        "shadow_ttft": total(prom, mn.SHADOW_TTFT + "_count", CAND),
        "shadow_tokens": total(prom, mn.SHADOW_OUTPUT_TOKENS, CAND),
        "shadow_base": total(prom, mn.SHADOW_REQUESTS, BASE),
        "golden_pass": total(prom, mn.SHADOW_GOLDEN, CAND, 'result="pass"'),
        "golden_fail": total(prom, mn.SHADOW_GOLDEN, CAND, 'result="fail"'),
    }


def quiet_counts(prom: PrometheusClient, cap_s: float = 240) -> dict[str, float]:
    """The counts once Prometheus holds all the route's earlier traffic: two reads 15 s apart agree
    (the ingress hands its counters to Ray within 1 s, Ray exports every few seconds, Prometheus
    scrapes every 5 s; an earlier test's requests can still be on their way, e.g. after it
    restarted Prometheus)."""
    last = [counts(prom)]

    def settled():
        time.sleep(15)
        now = counts(prom)
        same, last[0] = now == last[0], now
        return now if same else None

    return wait_for(settled, cap_s, "the route's counts in Prometheus to stop moving", poll_s=0)


def test_shadow_copies_reach_the_candidate_and_users_see_only_the_baseline(fleet, fleet_url, prometheus_url):
    act = LocalServeActuator(fleet.name)
    prom = PrometheusClient(prometheus_url)
    assert read(lambda: act.get_weights(ROUTE)) == {BASE: 100, CAND: 0}
    assert read(lambda: act.get_shadow(ROUTE)) == {}
    before = quiet_counts(prom)
    run = int(time.time())
    users = [f"shadow-{run}-{i}" for i in range(N)]
    expected = sum(shadowed(u, SETTING["percent"]) for u in users)
    assert 10 <= expected <= 30  # about half: the hash is seeded, not fitted to this test
    try:
        assert act.set_shadow(ROUTE, SETTING) is True
        wait_for(lambda: read(lambda: act.get_shadow(ROUTE)) == SETTING, 120, "the ingress to run the shadow setting")
        arms = []
        for i, user in enumerate(users):
            body = {"model": ROUTE, "prompt": PROMPT, "max_tokens": 4, "ignore_eos": True,
                    "stream": i % 2 == 0, "user": user}
            r = requests.post(f"{fleet_url}/v1/completions", json=body, timeout=120)
            _ = r.content
            assert r.status_code == 200, r.text[:300]
            arms.append(r.headers.get("x-corral-arm"))
        assert arms == [BASE] * N  # every answer came from the baseline

        def settled():
            now = counts(prom)
            done = (now["shadow_cand"] - before["shadow_cand"]) + (now["shadow_dropped"] - before["shadow_dropped"])
            scored = (now["golden_fail"] - before["golden_fail"]) >= now["shadow_cand_ok"] - before["shadow_cand_ok"]
            return now if done >= expected and now["user_base"] - before["user_base"] >= N and scored else None

        after = wait_for(settled, 120, "every shadow copy (sent or dropped) and every user request in Prometheus",
                         poll_s=2)
    finally:
        act.set_shadow(ROUTE, None)
        wait_for(lambda: read(lambda: act.get_shadow(ROUTE)) == {}, 120, "the ingress to stop shadowing")
    delta = {k: after[k] - before[k] for k in after}
    print("shadow e2e:", {"expected_copies": expected, **delta})
    # One copy or one drop per shadowed user, no more; most copies were answered.
    assert delta["shadow_cand"] + delta["shadow_dropped"] == pytest.approx(expected)
    assert delta["shadow_cand"] >= 1 and delta["shadow_cand_ok"] == delta["shadow_cand"]
    assert delta["shadow_ttft"] >= 1 and delta["shadow_tokens"] == pytest.approx(4 * delta["shadow_cand_ok"])
    # The candidate's user series did not move; the baseline's counted exactly the users' requests.
    assert delta["user_cand"] == 0 and delta["user_cand_tokens"] == 0
    assert delta["user_base"] == pytest.approx(N)
    assert delta["shadow_base"] == 0
    # Every answered copy was a golden prompt's, scored by the rule that travelled with the setting.
    assert delta["golden_fail"] == pytest.approx(delta["shadow_cand_ok"]) and delta["golden_pass"] == 0
    assert read(lambda: act.get_weights(ROUTE)) == {BASE: 100, CAND: 0}
