"""corral's policy inside Ray Serve's controller scales a live arm out under load and back in."""

from __future__ import annotations

import glob
import threading
import time
from pathlib import Path

import requests

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
    for path in glob.glob("/tmp/ray/session_latest/logs/serve/controller_*.log"):
        lines += [ln for ln in Path(path).read_text(errors="replace").splitlines() if f"corral autoscaler: {ARM} " in ln]
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
    before = len(_decisions())
    stop = threading.Event()
    failures: list[str] = []

    def user() -> None:
        body = {"model": ARM, "prompt": "one two three", "max_tokens": 48, "ignore_eos": True}
        while not stop.is_set():
            r = requests.post(f"{fleet_url}/v1/completions", json=body, timeout=120)
            if r.status_code != 200:
                failures.append(r.text[:200])

    users = [threading.Thread(target=user, daemon=True) for _ in range(8)]  # 4x the per-replica target
    for u in users:
        u.start()
    try:
        dep = _wait(fleet, lambda d: d.get("target_num_replicas") == 2 and _running(d) == 2, timeout_s=240)
    finally:
        stop.set()
        for u in users:
            u.join(timeout=120)
    assert dep.get("target_num_replicas") == 2 and _running(dep) == 2, dep
    assert not failures, failures[:3]
    ups = [ln for ln in _decisions()[before:] if "scale_up 1 -> 2" in ln]
    assert ups, _decisions()[before:]  # the policy's own decision, with its reason, in the controller log
    # Idle again: after downscale_delay_s (10 s) the policy removes the extra replica.
    dep = _wait(fleet, lambda d: d.get("target_num_replicas") == 1, timeout_s=120)
    assert dep.get("target_num_replicas") == 1, dep
    assert any("scale_down 2 -> 1" in ln for ln in _decisions()[before:])
