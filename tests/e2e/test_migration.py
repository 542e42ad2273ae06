"""The migration demo end to end, through the CLI a user types: `corral up`, `corral rollout start
--run`, `corral rollout status`, `corral ab report --prometheus` (table, JSON, HTML), `corral down`.

cluster/fleets/migration.yaml (stand-in old arm -> SmolLM2) must pass a shadow stage and promote
50 -> 70 -> 90 -> 100 under load with no failed request; cluster/fleets/migration-bad.yaml (the reverse) must roll back
before 70%. The A/B report over the good run must give accuracy (golden set), speed (TTFT, ITL,
latency), satisfaction (/v1/feedback) and cost per arm. This module deploys its own fleets (it
replaces any running fleet, like every e2e module). Set CORRAL_E2E_TRANSCRIPTS=DIR to keep each
command's output there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import BackgroundLoad

# Not in `make test` (its own fleets replace the suite's, and it takes ~15 min of CI's time):
# `make test-migration` runs it.
pytestmark = pytest.mark.migration

ROOT = Path(__file__).resolve().parents[2]
GOOD, BAD = ROOT / "cluster/fleets/migration.yaml", ROOT / "cluster/fleets/migration-bad.yaml"
URL, PROM = "http://127.0.0.1:8000", "http://127.0.0.1:9090"
CORRAL = [sys.executable, "-m", "corral.cli"]


def corral(*args, cwd: Path, out: Path, name: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([*CORRAL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    (out / f"{name}.txt").write_text(f"$ corral {' '.join(map(str, args))}\n{p.stdout}\n{p.stderr[-4000:]}")
    return p


class Load(BackgroundLoad):
    """Users asking a question the golden set also asks; each rates the answer through /v1/feedback
    (1 if it names Paris, else 0): satisfaction measured the way an application would."""

    def __init__(self, threads: int = 6):
        super().__init__(threads)
        self.codes: Counter = Counter()
        self.arms: Counter = Counter()
        self.feedback: Counter = Counter()

    def _run(self, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            # Streaming: the ingress records TTFT and ITL only for streamed responses.
            body = {"model": "llama", "max_tokens": 8, "temperature": 0, "user": f"user-{k}-{i}", "stream": True,
                    "messages": [{"role": "user", "content": "What is the capital of France? Answer with one word."}]}
            i += 1
            try:
                r = requests.post(f"{URL}/v1/chat/completions", json=body, timeout=120, stream=True)
                rid, text = None, ""
                for line in r.iter_lines(decode_unicode=True):
                    if line and line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        rid = rid or chunk.get("id")
                        for c in chunk.get("choices") or []:
                            text += (c.get("delta") or {}).get("content") or ""
            except (requests.RequestException, ValueError) as exc:
                self.codes[type(exc).__name__] += 1
                continue
            self.codes[r.status_code] += 1
            if r.status_code == 200 and rid:
                self.arms[r.headers.get("x-corral-arm")] += 1
                score = 1.0 if "paris" in text.lower() else 0.0
                try:
                    fb = requests.post(f"{URL}/v1/feedback", json={"response_id": rid, "score": score}, timeout=30)
                    self.feedback[fb.status_code] += 1
                except requests.RequestException as exc:
                    self.feedback[type(exc).__name__] += 1


def weight_changes(store: Path, candidate: str) -> list[int]:
    seq: list[int] = []
    for e in json.loads(store.read_text())["events"]:
        w = e["weights"].get(candidate)
        if w is not None and (not seq or seq[-1] != w):
            seq.append(w)
    return seq


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory) -> Path:
    d = Path(os.environ.get("CORRAL_E2E_TRANSCRIPTS") or tmp_path_factory.mktemp("transcripts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def down(transcripts, tmp_path_factory):
    # A running Ray head may run another checkout's code (`corral up` reuses a head): start clean.
    corral("down", cwd=tmp_path_factory.mktemp("down0"), out=transcripts, name="0-down-before", timeout=300)
    yield
    if not os.environ.get("CORRAL_E2E_KEEP"):
        corral("down", cwd=tmp_path_factory.mktemp("down"), out=transcripts, name="5-down", timeout=300)


def test_good_migration_promotes_and_the_ab_report_has_all_four_measures(tmp_path, transcripts, down):
    up = corral("up", GOOD, cwd=tmp_path, out=transcripts, name="1-up")
    assert up.returncode == 0, up.stderr[-3000:]
    t0 = time.time()
    with Load() as load:
        time.sleep(20)  # series exist in Prometheus before the rollout's first analysis
        run = corral("rollout", "start", GOOD, "--run", "--tick-s", "2", cwd=tmp_path, out=transcripts,
                     name="2-rollout-start")
        time.sleep(15)  # a last scrape of the final step
    status = corral("rollout", "status", GOOD, cwd=tmp_path, out=transcripts, name="3-rollout-status")
    store = tmp_path / ".corral" / "rollout-migration.json"
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert "Succeeded" in status.stdout
    assert weight_changes(store, "smollm2") == [0, 50, 70, 90, 100] or \
        weight_changes(store, "smollm2") == [50, 70, 90, 100]
    assert set(load.codes) == {200}, load.codes  # zero failed requests through every weight change
    assert load.arms["smollm2"] > 0 and load.arms["llama2-stand-in"] > 0
    assert set(load.feedback) == {200}, load.feedback
    events = [e["reason"] for e in json.loads(store.read_text())["events"]]
    assert any("shadow stage passed" in r for r in events), events  # shadow before any user saw smollm2

    since, until = f"{t0:.0f}", f"{time.time():.0f}"
    common = [GOOD, "--prometheus", PROM, "--since", since, "--until", until, "--gpu-price", "2.5"]
    table = corral("ab", "report", *common, "--owned-gpu-usd", "30000", "--power-usd-per-gpu-month", "100",
                   "--ops-usd-per-gpu-month", "200", "--api-input-usd-per-1m", "0.1", "--api-output-usd-per-1m", "0.3",
                   cwd=tmp_path, out=transcripts, name="4-ab-report")
    assert table.returncode == 0, table.stderr[-3000:]
    html = transcripts / "migration-ab.html"
    js = corral("ab", "report", *common, "--json", "--html", html, cwd=tmp_path, out=transcripts, name="4-ab-report-json")
    assert js.returncode == 0, js.stderr[-3000:]
    rows = {r["metric"]: r for r in json.loads(js.stdout)["rows"]}
    for arm in ("llama2-stand-in", "smollm2"):
        assert rows["requests"]["arms"][arm]["value"] > 0
        assert rows["error_rate"]["arms"][arm]["value"] == 0.0                  # speed and errors
        assert rows["ttft_p95_s"]["arms"][arm]["value"] > 0 and rows["itl_p50_s"]["arms"][arm]["value"] > 0
        assert rows["golden_accuracy"]["arms"][arm]["value"] is not None        # accuracy
        assert rows["satisfaction_pass_rate"]["arms"][arm]["value"] is not None  # satisfaction
        assert rows["cost_per_1m_output_tokens_usd"]["arms"][arm]["value"] > 0  # cost
    # the candidate should win on accuracy and satisfaction, and lose on speed (30 layers vs 2)
    assert rows["golden_accuracy"]["arms"]["smollm2"]["value"] > rows["golden_accuracy"]["arms"]["llama2-stand-in"]["value"]
    assert rows["satisfaction_pass_rate"]["arms"]["smollm2"]["value"] > 0.5 > \
        rows["satisfaction_pass_rate"]["arms"]["llama2-stand-in"]["value"]
    assert rows["satisfaction_pass_rate"]["test"]["significant"]
    # The shadow stage: its copies in rows of their own, and the users' golden prompt scored on them.
    assert rows["shadow_requests"]["arms"]["smollm2"]["value"] > 0
    assert rows["shadow_requests"]["arms"]["llama2-stand-in"]["value"] == 0
    assert rows["shadow_golden_pass_rate"]["arms"]["smollm2"]["value"] > 0.5
    assert html.read_text().count("data:image/png;base64,") == 4
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        png = transcripts / "migration-ab.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                        "--window-size=1200,2000", html.as_uri()], capture_output=True, timeout=120)
        assert png.exists() and png.stat().st_size > 20_000


def test_bad_migration_rolls_back_before_70(tmp_path, transcripts, down):
    up = corral("up", BAD, cwd=tmp_path, out=transcripts, name="6-up-bad")
    assert up.returncode == 0, up.stderr[-3000:]
    with Load(threads=2) as load:
        run = corral("rollout", "start", BAD, "--run", "--tick-s", "2", cwd=tmp_path, out=transcripts,
                     name="7-rollout-start-bad")
    status = corral("rollout", "status", BAD, cwd=tmp_path, out=transcripts, name="8-rollout-status-bad")
    assert run.returncode == 1 and "RolledBack" in status.stdout, (run.stdout[-3000:], status.stdout)
    assert max(weight_changes(tmp_path / ".corral" / "rollout-migration-bad.json", "llama2-random")) < 70
    assert set(load.codes) == {200}, load.codes
