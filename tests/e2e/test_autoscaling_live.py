"""corral's policy inside Ray Serve's controller scales a live arm out under load and back in."""

from __future__ import annotations

import threading
import time

import requests

from tests.e2e.conftest import ray_log_files

ARM = "tiny-elastic"


def _deployment(fleet) -> dict:
    from corral.serving.app import llm_deployment_name
    from corral.serving.local import LocalCluster

    status = LocalCluster().app_status(fleet.name) or {}
    return (status.get("deployments") or {}).get(llm_deployment_name(ARM)) or {}


def _running(dep: dict) -> int:
    return sum(r.get("state") == "RUNNING" for r in dep.get("replicas") or [])


def _decisions() -> list[str]:
    lines = []
    for text in ray_log_files("serve/controller_*.log").values():
        lines += [ln for ln in text.splitlines() if f"corral autoscaler: {ARM} " in ln]
    return lines


def _wait(fleet, ok, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        dep = _deployment(fleet)
        if ok(dep) or time.monotonic() > deadline:
            return dep
        time.sleep(1)


def test_policy_scales_out_under_load_and_back_in(fleet, fleet_url):
    assert _deployment(fleet).get("target_num_replicas") == 1
    before = set(_decisions())  # log lines carry timestamps: new decisions are the lines not seen before
    stop = threading.Event()
    attempts = [0] * 8
    ok = [0] * 8
    failures: list[str] = []

    def user(n: int) -> None:
        body = {"model": ARM, "prompt": "one two three", "max_tokens": 48, "ignore_eos": True}
        while not stop.is_set():
            attempts[n] += 1
            try:
                r = requests.post(f"{fleet_url}/v1/completions", json=body, timeout=120)
            except Exception as exc:  # a reset or timeout counts as a failure; the thread lives on
                failures.append(repr(exc)[:200])
                continue
            if r.status_code == 200:
                ok[n] += 1
            else:
                failures.append(f"{r.status_code} {r.text[:200]}")

    users = [threading.Thread(target=user, args=(n,), daemon=True) for n in range(8)]  # 4x the per-replica target
    for u in users:
        u.start()
    try:
        dep = _wait(fleet, lambda d: d.get("target_num_replicas") == 2 and _running(d) == 2, timeout_s=300)
    finally:
        stop.set()
        for u in users:
            u.join(timeout=150)
    assert not any(u.is_alive() for u in users)
    assert dep.get("target_num_replicas") == 2 and _running(dep) == 2, dep
    assert not failures, failures[:3]
    assert sum(attempts) == sum(ok) > 0 and all(ok), (attempts, ok)  # every attempt of every user succeeded
    new = [ln for ln in _decisions() if ln not in before]
    assert any("scale_up 1 -> 2" in ln for ln in new), new  # the policy's own decision, with its reason, in the controller log
    # Idle again: after downscale_delay_s (10 s) the policy removes the extra replica (cap: 240 s).
    dep = _wait(fleet, lambda d: d.get("target_num_replicas") == 1, timeout_s=240)
    assert dep.get("target_num_replicas") == 1, dep
    assert any("scale_down 2 -> 1" in ln for ln in _decisions() if ln not in before)
