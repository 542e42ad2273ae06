"""The rollout controller as a process: `corral rollout run --daemon`, `run`, `start`, `abort`,
`alive`, against a FileStore and HTTP stubs of Serve's REST API, Prometheus and an OpenAI
endpoint that enforces an API key (tests/unit/rollout_stubs.py)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from rollout_stubs import StubOpenAI, StubPrometheus, StubServe

from corral.cli import main
from corral.cluster.spec.rollout import RolloutSpec, RolloutStep
from corral.rollout.controller import start_rollout
from corral.rollout.daemon import Daemon, LogLines, heartbeat_age
from corral.rollout.quality import GoldenSetRunner, load_golden, local_endpoint
from corral.rollout.store import FileStore

CORRAL = [sys.executable, "-m", "corral.cli"]
KEY = "sk-test-7f3a"


def fleet_doc(quality: bool, steps=(50, 100)) -> dict:
    return {
        "apiVersion": "corral/v1", "kind": "Fleet", "name": "demo",
        "server": {"host": "0.0.0.0", "port": 8000},
        "arms": [{"name": "old", "model": {"demo": "tiny-llama2-random"}, "replicas": {"min": 1, "max": 2}},
                 {"name": "new", "model": {"demo": "smollm2-135m-instruct"}, "replicas": {"min": 0, "max": 2}}],
        "routes": [{"name": "chat", "arms": [{"arm": "old", "weight": 100}, {"arm": "new", "weight": 0}]}],
        "rollout": {"route": "chat", "baseline": "old", "candidate": "new", "gates": [],
                    "steps": [{"weight": w, "bake_s": 0.5, "min_requests": 1} for w in steps],
                    "analysis_interval_s": 0.2, "min_window_s": 0.2, "analysis_window_s": 10,
                    "min_sample_requests": 1,
                    "quality": {"enabled": quality, "golden_set": "golden.jsonl", "min_score": 0.5}},
    }


@pytest.fixture
def world(tmp_path):
    """A fleet file, its Serve application (stub), Prometheus (stub), an OpenAI endpoint (stub)."""
    fleet = fleet_doc(quality=True)
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    (tmp_path / "golden.jsonl").write_text('{"id": "fr", "prompt": "Capital of France?", "answers": ["Paris"]}\n')
    serve_fleet = {k: v for k, v in fleet.items() if k not in ("routes", "rollout")}
    serve = StubServe({"applications": [{
        "name": "demo", "route_prefix": "/", "import_path": "corral.serving.app:app_builder",
        "args": {"fleet": serve_fleet},
        "deployments": [{"name": "CorralIngress", "user_config": {"routes": {"chat": {"old": 100, "new": 0}}}}]}]})
    prom, openai = StubPrometheus(100.0), StubOpenAI(KEY)
    yield tmp_path, serve, prom, openai
    for s in (serve, prom, openai):
        s.close()


def run_args(tmp_path, serve, prom, openai):
    return ["--store", str(tmp_path / "r.json"), "--prometheus", prom.url, "--dashboard", serve.url,
            "--endpoint", openai.url, "--api-key-env", "CORRAL_TEST_KEY", "--tick-s", "0.1"]


def wait_for(cond, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def ingress_weights(serve):
    from corral.serving.app import route_weights

    return route_weights(serve.config["applications"][0])["chat"]


def test_daemon_process_idles_runs_rollouts_and_stops_on_sigterm(world):
    tmp_path, serve, prom, openai = world
    fleet, store, heartbeat = str(tmp_path / "fleet.yaml"), FileStore(tmp_path / "r.json"), tmp_path / "hb" / "alive"
    env = {**os.environ, "CORRAL_TEST_KEY": KEY}
    proc = subprocess.Popen([*CORRAL, "rollout", "run", fleet, "--daemon", *run_args(tmp_path, serve, prom, openai),
                             "--heartbeat-file", str(heartbeat)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # No rollout stored: it stays up and keeps its heartbeat fresh.
        wait_for(heartbeat.exists, what="the first heartbeat")
        first = heartbeat.stat().st_mtime
        wait_for(lambda: heartbeat.stat().st_mtime > first, what="a second heartbeat while idle")
        time.sleep(1.0)
        assert proc.poll() is None, "".join(out)
        assert main(["rollout", "alive", "--heartbeat-file", str(heartbeat), "--max-age-s", "5"]) == 0
        assert serve.puts == 0 and not openai.requests

        # A rollout is started: it runs to Succeeded through Serve, the golden set uses the key.
        assert main(["rollout", "start", fleet, "--store", str(tmp_path / "r.json")]) == 0
        wait_for(lambda: store.load().state.terminal, what="the first rollout to end")
        doc = store.load()
        assert doc.state.phase.value == "Succeeded", doc.events
        assert ingress_weights(serve) == {"old": 0, "new": 100}
        asked = [r for r in openai.requests if r[1] == "/v1/chat/completions"]
        assert {r[2]["model"] for r in asked} == {"old", "new"}
        assert all(r[2]["auth"] == f"Bearer {KEY}" for r in asked)

        # Finished: still up, still heartbeating; a second rollout is picked up and aborted.
        time.sleep(1.0)
        assert proc.poll() is None, "".join(out)
        serve.config["applications"][0]["deployments"][0]["user_config"]["routes"]["chat"] = {"old": 100, "new": 0}
        fleet_file = tmp_path / "fleet.yaml"
        slow = fleet_doc(quality=False)
        slow["rollout"]["steps"] = [{"weight": 50, "bake_s": 3600}, {"weight": 100, "bake_s": 3600}]
        fleet_file.write_text(yaml.safe_dump(slow))
        assert main(["rollout", "start", fleet, "--store", str(tmp_path / "r.json")]) == 0
        second = store.load().id
        wait_for(lambda: store.load().state.stage.value == "baking", what="the second rollout to bake")
        assert ingress_weights(serve) == {"old": 50, "new": 50}
        assert main(["rollout", "abort", fleet, "--store", str(tmp_path / "r.json"), "--reason", "test"]) == 0
        wait_for(lambda: store.load().state.terminal, what="the abort to be applied")
        assert store.load().id == second and store.load().state.phase.value == "RolledBack"
        wait_for(lambda: ingress_weights(serve) == {"old": 100, "new": 0}, what="weights back on the baseline")
        time.sleep(0.5)
        assert proc.poll() is None, "".join(out)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        reader.join(timeout=5)
    text = "".join(out)
    assert rc == 0, text
    lines = text.splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
    assert lines and all(stamp.match(line) for line in lines), text
    assert any("idle: no rollout stored" in line for line in lines)
    assert any("phase=Succeeded" in line and "succeed:" in line for line in lines)
    assert any("phase=Progressing" in line and "weights=new=50,old=50" in line for line in lines)
    assert any("aborted by operator (test)" in line for line in lines)
    assert lines[-1].endswith("rollout controller stopped")


def test_run_without_daemon_keeps_its_exit_codes(world, capsys, monkeypatch):
    tmp_path, serve, prom, openai = world
    fleet = str(tmp_path / "fleet.yaml")
    monkeypatch.setenv("CORRAL_TEST_KEY", KEY)
    args = run_args(tmp_path, serve, prom, openai)
    assert main(["rollout", "run", fleet, *args]) == 2
    assert "no rollout found" in capsys.readouterr().err
    assert main(["rollout", "start", fleet, "--store", str(tmp_path / "r.json")]) == 0
    assert main(["rollout", "run", fleet, *args]) == 0
    out = capsys.readouterr().out
    assert "rollout Succeeded" in out
    assert re.search(r"Z rollout \w+ phase=Progressing step=1/2 \(50%\) stage=shifting", out), out  # not a TTY
    # Aborted before it runs: `run` ends RolledBack with exit 1.
    assert main(["rollout", "start", fleet, "--store", str(tmp_path / "r.json")]) == 0
    assert main(["rollout", "abort", fleet, "--store", str(tmp_path / "r.json")]) == 0
    assert main(["rollout", "run", fleet, *args]) == 1
    assert "rollout RolledBack: rolled back: aborted by operator" in capsys.readouterr().out


def test_missing_api_key_env_is_bad_input_before_anything_is_stored(world, capsys, monkeypatch):
    tmp_path, serve, prom, openai = world
    monkeypatch.delenv("CORRAL_TEST_KEY", raising=False)
    fleet = str(tmp_path / "fleet.yaml")
    assert main(["rollout", "start", fleet, "--run", *run_args(tmp_path, serve, prom, openai)]) == 2
    assert "--api-key-env: environment variable CORRAL_TEST_KEY is not set" in capsys.readouterr().err
    assert FileStore(tmp_path / "r.json").load() is None
    assert main(["rollout", "run", fleet, "--daemon", *run_args(tmp_path, serve, prom, openai)]) == 2


def test_alive(tmp_path, capsys):
    hb = tmp_path / "alive"
    assert main(["rollout", "alive", "--heartbeat-file", str(hb)]) == 1
    assert "no heartbeat file" in capsys.readouterr().out
    hb.touch()
    assert main(["rollout", "alive", "--heartbeat-file", str(hb), "--max-age-s", "120"]) == 0
    old = time.time() - 300
    os.utime(hb, (old, old))
    assert main(["rollout", "alive", "--heartbeat-file", str(hb), "--max-age-s", "120"]) == 1
    assert "heartbeat 300s old (max 120s)" in capsys.readouterr().out
    assert heartbeat_age(hb, old + 10) == pytest.approx(10, abs=1)


class FlakyStore(FileStore):
    """A store whose first `n` loads fail (the Kubernetes API unreachable)."""

    def __init__(self, path, n):
        super().__init__(path)
        self.n = n

    def load(self):
        if self.n > 0:
            self.n -= 1
            raise ConnectionRefusedError("kubernetes API: connection refused")
        return super().load()


def test_transient_errors_are_logged_and_retried_with_backoff(tmp_path):
    store = FlakyStore(tmp_path / "r.json", 3)
    buf = io.StringIO()
    stop = threading.Event()
    waits = []
    original_wait = stop.wait

    def wait(t):
        waits.append(t)
        if len(waits) >= 6:
            stop.set()
        return original_wait(0)

    stop.wait = wait
    hb = tmp_path / "alive"
    d = Daemon(store, lambda doc, spec: pytest.fail("no rollout: nothing to build"), LogLines(buf), idle_s=5.0,
               heartbeat=hb, stop=stop, backoff_s=(1.0, 3.0))
    assert d.run() == 0
    assert waits == [1.0, 2.0, 3.0, 5.0, 5.0, 5.0]  # exponential, capped; reset once a step succeeds
    log = buf.getvalue()
    assert log.count("ConnectionRefusedError: kubernetes API: connection refused") == 3
    assert "error (attempt 3, retrying in 3s)" in log
    assert log.count("idle: no rollout stored") == 1  # the idle line once, not every poll
    assert hb.exists()


def test_a_repeated_error_is_printed_once_a_minute_with_a_count():
    t, buf = [0.0], io.StringIO()
    log = LogLines(buf, clock=lambda: t[0])
    for _ in range(14):  # t = 0, 5, ..., 65
        log.error(ConnectionError("dashboard unreachable"))
        t[0] += 5
    log.error(ConnectionError("dashboard unreachable"))  # t = 70
    log.error(ValueError("other"))
    lines = [line.split(" ", 1)[1] for line in buf.getvalue().splitlines()]
    assert lines == ["error: ConnectionError: dashboard unreachable",
                     "error: ConnectionError: dashboard unreachable (11 more times since the last report)",
                     "error: the previous error occurred 2 more times",
                     "error: ValueError: other"], lines


def test_unexpected_errors_are_logged_with_their_traceback(tmp_path):
    store = FileStore(tmp_path / "r.json")
    spec = RolloutSpec(route="chat", baseline="old", candidate="new", steps=[RolloutStep(weight=100, bake_s=1)])
    start_rollout(store, spec, 0.0)
    buf, stop = io.StringIO(), threading.Event()

    def make(doc, spec):
        stop.set()
        raise TypeError("a bug")

    Daemon(store, make, LogLines(buf), stop=stop, backoff_s=(0.01, 0.01)).run()
    log = buf.getvalue()
    assert "TypeError: a bug" in log and "Traceback (most recent call last)" in log


def test_golden_set_sends_the_key_and_a_wrong_key_is_an_error(world):
    tmp_path, serve, prom, openai = world
    prompts = load_golden(tmp_path / "golden.jsonl")
    beats = []
    runner = GoldenSetRunner(openai.url, prompts, api_key=KEY, on_prompt=lambda: beats.append(1))
    assert runner.run(["old", "new"]).scores == {"old": 1.0, "new": 1.0}
    assert len(beats) == 2  # one heartbeat per prompt and arm
    failed = GoldenSetRunner(openai.url, prompts).run(["old"])
    assert failed.error is not None and "401" in failed.error and not failed.scores
    assert openai.requests[-1][2]["auth"] is None


@pytest.mark.parametrize("host,url", [("0.0.0.0", "http://127.0.0.1:8000"), ("127.0.0.1", "http://127.0.0.1:8000"),
                                      ("::", "http://[::1]:8000"), ("fd00::5", "http://[fd00::5]:8000"),
                                      ("llm.example", "http://llm.example:8000")])
def test_local_endpoint(host, url):
    assert local_endpoint(host, 8000) == url


def test_daemon_flag_is_refused_on_start(world, capsys):
    tmp_path, *_ = world
    assert main(["rollout", "start", str(tmp_path / "fleet.yaml"), "--daemon"]) == 2
    assert Path(tmp_path / "r.json").exists() is False


def test_the_charts_command_line_against_a_stub_kubernetes_api(tmp_path):
    """The exact command the Helm chart renders, with the real `kubernetes` client (kubeconfig ->
    the stub API server of test_rollout_kuberay): idle without a rollout, picks up one started with
    `corral rollout start --kube`, logs (not swallows) that Serve's status is unreachable (no head
    service resolves here) and holds the weights, stays alive, SIGTERM -> 0."""
    from test_rollout_kuberay import FLEET, StubApiServer, rayservice

    api = StubApiServer(rayservice())
    api.thread.start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "stub", "cluster": {"server": api.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "stub", "user": "u", "namespace": "llm"}}]}))
        fleet = {**FLEET, "apiVersion": "corral/v1", "kind": "Fleet",
                 "rollout": {"route": "chat", "baseline": "llama2", "candidate": "llama3",
                             "quality": {"enabled": False}}}
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(yaml.safe_dump(fleet))
        heartbeat = tmp_path / "corral-controller.alive"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CORRAL_API_KEY": KEY}
        kube = ["--kube", "corral", "--namespace", "llm"]
        proc = subprocess.Popen([*CORRAL, "rollout", "run", str(fleet_file), "--daemon", *kube,
                                 "--prometheus", "http://127.0.0.1:9", "--endpoint", "http://corral-serve-svc.llm.svc:8000",
                                 "--api-key-env", "CORRAL_API_KEY", "--heartbeat-file", str(heartbeat), "--tick-s", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            wait_for(lambda: any("idle: no rollout stored" in line for line in out), what="the idle line")
            started = subprocess.run([*CORRAL, "rollout", "start", str(fleet_file), *kube], env=env,
                                     capture_output=True, text=True, timeout=60)
            assert started.returncode == 0, started.stderr
            wait_for(lambda: any("reading Serve status from http://corral-head-svc.llm.svc:8265" in line for line in out),
                     what="the unreachable Serve status to be logged")
            time.sleep(1.0)
            assert proc.poll() is None, "".join(out)
            assert main(["rollout", "alive", "--heartbeat-file", str(heartbeat), "--max-age-s", "5"]) == 0
            doc = json.loads(api.obj["metadata"]["annotations"]["corral.dev/rollout"])
            assert doc["state"]["phase"] == "Pending"  # weights unknown: nothing started, nothing written
            assert "deployments" not in api.app()
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            reader.join(timeout=5)
        assert rc == 0, "".join(out)
    finally:
        api.server.shutdown()
        api.server.server_close()
