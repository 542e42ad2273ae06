"""The CLI as users run it (subprocesses, exit codes) on the real fleet, and what it must never do:
log a prompt or a completion.

`corral down` stops the session's fleet, so its test carries the `stops_fleet` marker, which
tests/e2e/conftest.py moves to the very end of the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import yaml

from tests.e2e.conftest import ray_log_files


def corral(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_plan_cluster_command_exit_codes():
    ok = corral("plan", "cluster", "--model", "llama-3-70b", "--gpu", "H100-80GB", "--gpus-per-node", "8", "--nodes", "1")
    assert ok.returncode == 0, ok.stderr
    assert "best: TP=8 x PP=1" in ok.stdout and "hf: meta-llama/Meta-Llama-3-70B" in ok.stdout
    too_small = corral("plan", "cluster", "--model", "llama-3-70b", "--gpu", "A100-40GB", "--gpus-per-node", "1")
    assert too_small.returncode == 2
    assert "cannot be served on 1 node(s) x 1 A100-40GB" in too_small.stderr  # with the arithmetic
    assert "> usable 0.9 x 40.0 GiB" in too_small.stderr
    unknown = corral("plan", "cluster", "--model", "llama-3-70b", "--gpu", "Z100")
    assert unknown.returncode == 2 and "--gpu: unknown GPU type 'Z100'" in unknown.stderr


def test_up_refuses_tp_that_does_not_divide_the_heads_and_leaves_the_fleet_alone(fleet, tmp_path):
    # SmolLM2-135M has 9 attention heads and 3 KV heads: TP=2 fits the 2 devices but cannot split them.
    bad = {"name": "tp-bad", "cluster": {"device": "cpu", "nodes": 1, "devices_per_node": 2},
           "arms": [{"name": "smol-tp2", "model": {"demo": "smollm2-135m-instruct"},
                     "engine": {"tensor_parallel_size": 2}}]}
    path = tmp_path / "tp-bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = corral("up", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert ("arms[smol-tp2].engine.tensor_parallel_size=2 does not divide the model's "
            "num_attention_heads=9, num_key_value_heads=3") in out.stderr
    status = corral("status")
    assert status.returncode == 0 and f"fleet {fleet.name}: RUNNING" in status.stdout, status.stdout
    assert "tp-bad" not in status.stdout  # nothing deployed


def test_prompts_and_completions_never_reach_a_log(fleet, fleet_url):
    """vLLM request logging stays off (serving/app.py): a prompt marker sent through every path
    (chat, completions, streamed or not, routed or pinned) is in no Ray log file. The scan is shown to
    see these requests: the request ids sent with them are found (Serve takes a request's id from its
    `x-request-id` header, ray/serve/_private/constants.py SERVE_HTTP_REQUEST_ID_HEADER, read in
    ray/serve/_private/http_util.py, and writes it into its access log lines)."""
    marker = f"corral-secret-{uuid.uuid4().hex}"
    request_ids = []
    for i, (path, model, stream) in enumerate([("chat/completions", "llama", False), ("chat/completions", "tiny-random", True),
                                               ("completions", "llama", True), ("completions", "smollm2", False)]):
        rid = f"corral-logscan-{uuid.uuid4().hex}"
        request_ids.append(rid)
        body = {"model": model, "max_tokens": 4, "stream": stream, "user": f"log-{i}"}
        if path == "chat/completions":
            body["messages"] = [{"role": "user", "content": f"Repeat after me: {marker}"}]
        else:
            body["prompt"] = f"Repeat after me: {marker}"
        r = requests.post(f"{fleet_url}/v1/{path}", json=body, headers={"x-request-id": rid}, timeout=120)
        assert r.status_code == 200, r.text
        _ = r.content

    def scan() -> tuple[dict[str, str], list[str]]:
        logs = ray_log_files("**/*")
        return logs, [rid for rid in request_ids if not any(rid in text for text in logs.values())]

    deadline = time.monotonic() + 180  # log files are written asynchronously: wait until the ids show up
    logs, unseen = scan()
    while unseen and time.monotonic() < deadline:
        time.sleep(3)
        logs, unseen = scan()
    assert logs and not unseen, f"request ids not found in {len(logs)} Ray log files: {unseen}"
    leaked = sorted(name for name, text in logs.items() if marker in text)
    assert leaked == [], f"the prompt reached these Ray log files: {leaked}"


@pytest.mark.stops_fleet
@pytest.mark.skipif(bool(os.environ.get("CORRAL_E2E_KEEP")), reason="CORRAL_E2E_KEEP=1 keeps the fleet running")
def test_status_then_down_then_status(fleet):
    status = corral("status")
    assert status.returncode == 0, status.stderr
    assert f"fleet {fleet.name}: RUNNING" in status.stdout and "endpoint: http://" in status.stdout
    down = corral("down")
    assert down.returncode == 0, down.stderr
    assert "fleet stopped; Ray head and Prometheus stopped" in down.stdout
    after = corral("status")
    assert after.returncode == 1 and "no fleet is running" in after.stdout, (after.stdout, after.stderr)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{fleet.server.port}/v1/models", timeout=10)
