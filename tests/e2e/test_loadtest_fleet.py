"""Load-test checks against the real fleet (the `fleet_url` fixture provides its base URL).

* The client's TTFT and the server's own TTFT histogram count the same requests, the client's
  mean is never below the server's, and the gap (the HTTP proxy hop and request parsing, which
  the ingress cannot time) is under half the server's TTFT + 0.1 s. That is a sanity bound, not
  the 5% agreement goal: the goal is measured by benchmarks/ttft_agreement.py (results in
  benchmarks/results/), because a 2-core machine shared with three engines does not meet it.
* A short sweep runs cleanly and forced output lengths hold on vLLM.
Settings: CORRAL_METRICS_URL (default http://127.0.0.1:8080/metrics), CORRAL_TTFT_METRIC (default
the router's `ray_corral_ttft_seconds`; vLLM's engine histogram is another choice),
CORRAL_LOADTEST_MODEL (default `llama`).
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from corral.loadtests.report import read_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = os.environ.get("CORRAL_LOADTEST_MODEL", "llama")
METRICS_URL = os.environ.get("CORRAL_METRICS_URL", "http://127.0.0.1:8080/metrics")


def ttft_metric() -> str:
    if os.environ.get("CORRAL_TTFT_METRIC"):
        return os.environ["CORRAL_TTFT_METRIC"]
    from corral.cluster.metric_names import TTFT, exported

    return exported(TTFT)


def histogram_totals(name: str) -> tuple[float, float]:
    """Sum and count of a Prometheus histogram over all label sets."""
    text = requests.get(METRICS_URL, timeout=10).text
    total = {"sum": 0.0, "count": 0.0}
    for part in ("sum", "count"):
        for m in re.finditer(rf"^{re.escape(name)}_{part}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)", text, re.M):
            total[part] += float(m.group(1))
    return total["sum"], total["count"]


def loadtest(url, out, *args):
    cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--base-url", url, "--model", MODEL,
           "--out", str(out), "--progress-interval", "5", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "summary.json").read_text()), read_records(out / "requests.jsonl")


def test_client_ttft_matches_the_servers_histogram(fleet_url, tmp_path):
    name = ttft_metric()
    # Ray exports metrics every few seconds: wait until earlier tests' traffic has landed, so
    # the starting point really is "before our requests".
    # Settled = unchanged over one 6 s export period; cap 240 s, then fail rather than start from a moving count.
    sum0, count0 = histogram_totals(name)
    deadline = time.monotonic() + 240
    while True:
        time.sleep(6)
        again = histogram_totals(name)
        if again == (sum0, count0):
            break
        assert time.monotonic() < deadline, f"{name} still changing after 240 s: other traffic on the fleet?"
        sum0, count0 = again
    # No calibration probes and no warm-up: every request the server sees is one we measured.
    summary, records = loadtest(fleet_url, tmp_path, "--mode", "closed", "--concurrency", "1", "--duration", "20",
                                "--warmup", "0", "--max-requests", "20", "--no-calibrate",
                                "--input-tokens", "64", "--output-tokens", "16")
    ok = [r for r in records if r.ok]
    assert len(ok) == len(records) >= 5
    # Ray exports metrics every few seconds: wait until the histogram has seen all requests
    # (a generous cap for a loaded 2-core machine; the wait ends as soon as the count is there).
    deadline = time.monotonic() + 240
    while True:
        s1, c1 = histogram_totals(name)
        if c1 - count0 >= len(records) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert c1 - count0 == len(records), f"{name}: histogram counted {c1 - count0} requests, we sent {len(records)}"
    server_mean = (s1 - sum0) / (c1 - count0)
    client_mean = sum(r.ttft_s for r in ok) / len(ok)
    # The client sees the server's TTFT plus the HTTP proxy hop and request parsing, which
    # the ingress cannot time. On this 2-core machine shared with three engines that gap was
    # ~0.13 s (client 0.80 s vs server 0.67 s, 19%): the 5% goal is tracked by
    # benchmarks/ttft_agreement.py, not asserted here. What must hold: same requests counted,
    # the client never faster than the server, and the gap well below the TTFT itself (bound:
    # half the server's TTFT + 0.1 s, about 2.5x the gap measured here).
    assert client_mean >= server_mean, (client_mean, server_mean)
    assert client_mean - server_mean < 0.5 * server_mean + 0.1, (client_mean, server_mean)


def test_short_sweep_on_the_fleet(fleet_url, tmp_path):
    summary, records = loadtest(fleet_url, tmp_path, "--mode", "sweep", "--slo", "ttft_p95=5,tpot_p95=1",
                                "--sweep-start", "0.5", "--sweep-step", "0.5", "--sweep-max", "1",
                                "--duration", "8", "--warmup", "2", "--input-tokens", "64", "--output-tokens", "16")
    assert all(s["errors"] == 0 for s in summary["stages"])
    # ignore_eos + min_tokens force the length on vLLM; usage reports it.
    assert all(r.output_tokens == 16 for r in records if r.ok)
    assert all(abs(r.input_tokens - 64) <= 3 for r in records if r.ok)
    assert (tmp_path / "report.html").is_file()
