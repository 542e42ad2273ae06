"""The chart's `helm test` script, run against the real local fleet with API keys enforced.

No Kubernetes runs here, so the rendered test Pod's shell script runs directly (the same sh script
the curl image would run) with the Pod's environment: the Serve endpoint, and the key that the
rendered Secret holds. The fleet gets the `auth` the chart renders into the ingress's user_config
(hashes of the Secret's keys), applied in place as on KubeRay. The script must list every arm, get
one chat completion per arm pinned with `model: <arm>`, answered by that arm (x-corral-arm), and
fail at once on a refused key.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from test_helm_chart import by_kind, render, values_file  # noqa: E402

FLEET = ROOT / "tests" / "e2e" / "fleets" / "ab.yaml"


def _chart(tmp_path: Path, arms: list[str]) -> tuple[str, dict, str, dict]:
    fleet = yaml.safe_load(FLEET.read_text())
    fleet["arms"] = [a for a in fleet["arms"] if a["name"] in arms]
    fleet["routes"] = [{"name": "llama", "arms": [{"arm": arms[0], "weight": 100}]}]
    docs = render([values_file(tmp_path, {"fleet": fleet, "apiKeys": {"keys": "sk-helm-test-key"}})])
    (pod,) = by_kind(docs, "Pod")
    (container,) = pod["spec"]["containers"]
    script = container["args"][0].replace("/tmp/", f"{tmp_path}/")
    ref = next(e for e in container["env"] if e["name"] == "API_KEY")["valueFrom"]["secretKeyRef"]
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
    key = base64.b64decode(secret["data"][ref["key"]]).decode()
    (rs,) = by_kind(docs, "RayService")
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    (ingress,) = [d for d in app["deployments"] if d["name"] == "CorralIngress"]
    return script, {e["name"]: e.get("value") for e in container["env"]}, key, ingress["user_config"]["auth"]


def _run(script: str, env: dict, key: str, base: str) -> subprocess.CompletedProcess:
    run_env = {"PATH": os.environ["PATH"], "BASE": base, "WAIT_S": "120", "API_KEY": key}
    return subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=600)


def test_helm_test_script_passes_with_the_charts_key_and_fails_fast_without(fleet, fleet_url, tmp_path):
    from corral.serving.app import set_auth
    from corral.serving.local import LocalCluster

    arms = ["smollm2", "tiny-random"]
    script, env, key, auth = _chart(tmp_path, arms)
    assert env["BASE"].endswith("-serve-svc.serving.svc:8000")  # on KubeRay; here the local endpoint
    assert auth["enabled"] is True
    cluster = LocalCluster()
    assert cluster.update_app(fleet.name, lambda app: set_auth(app, auth))
    try:
        deadline = time.monotonic() + 60
        while requests.get(f"{fleet_url}/v1/models", timeout=30).status_code != 401:
            assert time.monotonic() < deadline, "auth was not applied"
            time.sleep(0.5)
        ok = _run(script, env, key, fleet_url)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for arm in arms:
            assert f"arm {arm}: ok" in ok.stdout
        started = time.monotonic()
        refused = _run(script, env, "sk-not-the-key", fleet_url)
        assert refused.returncode == 1 and "HTTP 401, the key from the Secret is refused" in refused.stdout
        assert time.monotonic() - started < 30  # no waiting out WAIT_S on a wrong key
    finally:
        cluster.update_app(fleet.name, lambda app: set_auth(app, {"enabled": False, "keys": []}))
        deadline = time.monotonic() + 60
        while requests.get(f"{fleet_url}/v1/models", timeout=30).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
