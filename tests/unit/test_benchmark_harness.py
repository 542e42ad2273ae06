"""The router benchmark's harness: request-by-request turns and the slot-cancelling summary.

The benchmark's verdict rests on these two pieces, so they are checked here against a local
HTTP server speaking the OpenAI chat shape (no Ray, no engine).
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _load import alternating  # noqa: E402
from router_overhead import paired_ratio, summarize  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve_and_alternate(pairs: int, stream: bool, fail_model: str | None = None):
    seen: list[str] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body["model"])
        if body["model"] == fail_model:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        usage = {"completion_tokens": body["max_tokens"]}
        if not body.get("stream"):
            return web.json_response({"choices": [], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage}, separators=(',', ':'))}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/a/v1/chat/completions", chat)
    app.router.add_post("/b/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        base = f"http://127.0.0.1:{port}"
        got = await alternating({"A": (f"{base}/a", "ma"), "B": (f"{base}/b", "mb")}, pairs, max_tokens=5,
                                stream=stream)
    finally:
        await runner.cleanup()
    return seen, got


@pytest.mark.parametrize("stream", [False, True])
def test_alternating_takes_turns_and_counts_per_target(stream):
    seen, got = asyncio.run(_serve_and_alternate(4, stream))
    # Order inside each pair alternates, so neither target always goes first.
    assert seen == ["ma", "mb", "mb", "ma", "ma", "mb", "mb", "ma"]
    for name in ("A", "B"):
        r = got[name]
        assert r["requests"] == 4 and r["failures"] == 0 and r["output_tokens"] == 20
        assert r["wall_s"] == pytest.approx(sum(r["latencies_s"]), abs=1e-3)
        assert r["interleaved"] is True and r["stream"] is stream


def test_alternating_counts_failures_apart_from_latencies():
    _, got = asyncio.run(_serve_and_alternate(3, False, fail_model="mb"))
    assert got["B"]["failures"] == 3 and got["B"]["requests"] == 0 and got["B"]["latency_p50_s"] is None
    assert got["A"]["failures"] == 0 and got["A"]["requests"] == 3


def _block(latency: float, phase: int, slot: int, n: int = 8, tokens: int = 32) -> dict:
    return {"latencies_s": [latency] * n, "latency_p50_s": latency, "output_tokens": n * tokens,
            "wall_s": latency * n, "output_tokens_per_s": tokens / latency, "requests": n, "failures": 0,
            "phase": phase, "slot": slot}


def test_summary_cancels_a_slot_bias_and_reports_its_size():
    # Router adds 1%; the first slot is 8% slower. Phase 0: corral first; phase 1: corral second.
    router, slot = 1.01, 1.08
    blocks = {
        "corral": [_block(4.0 * router * slot, 0, 0), _block(4.0 * router, 1, 1)],
        "plain": [_block(4.0, 0, 1), _block(4.0 * slot, 1, 0)],
    }
    s = summarize("1", blocks)
    assert [p["p50_latency_ratio"] for p in s["per_phase"]] == pytest.approx([router * slot, router / slot], abs=1e-3)
    assert s["slot_factor_p50"] == pytest.approx(slot, abs=1e-3)
    assert s["p50_latency_ratio_slot_cancelled"] == pytest.approx(router, abs=1e-3)
    assert s["throughput_ratio_slot_cancelled"] == pytest.approx(1 / router, abs=1e-3)
    assert s["concurrency"] == 1 and s["interleaved_per_request"] and s["requests_per_app"] == 16


def test_paired_ratio_is_a_geometric_mean_with_a_t_interval_on_logs():
    import math

    from scipy import stats

    ratios = [1.02, 0.97, 1.05, 1.01, 0.99, 1.04]
    logs = [math.log(r) for r in ratios]
    m, se = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    lo, hi = stats.t.interval(0.95, len(logs) - 1, loc=m, scale=se)
    got = paired_ratio(ratios)
    assert got["ratio"] == pytest.approx(math.exp(m), abs=1e-4) and got["pairs"] == 6
    assert got["ci95"] == pytest.approx([math.exp(lo), math.exp(hi)], abs=1e-4)
    # One pair has no spread to estimate: the interval is everything, so no goal is met at 95%.
    assert paired_ratio([1.1]) == {"ratio": 1.1, "ci95": [0.0, math.inf], "pairs": 1}


def test_summary_without_a_swap_has_no_slot_estimate():
    blocks = {"corral": [_block(4.4, 0, 0)], "plain": [_block(4.0, 0, 1)]}
    s = summarize("8:stream", blocks)
    assert s["stream"] and s["p50_latency_ratio_corral_vs_plain"] == pytest.approx(1.1)
    assert "slot_factor_p50" not in s


def test_shared_layout_points_the_plain_ingress_at_corrals_engine(tmp_path):
    from ray.serve.schema import ServeDeploySchema
    from router_overhead import layout

    from corral.cluster.spec import load_fleet
    from corral.serving.app import llm_deployment_name

    fleet = load_fleet()
    apps, app_of, model_of = layout(fleet, tmp_path, "shared", control=False)
    assert list(apps) == ["corral", "plain"]  # the engine's app is deployed first
    plain = apps["plain"]
    assert plain["import_path"] == "_shared_ingress:build" and plain["route_prefix"] == "/plain"
    working_dir = plain["runtime_env"]["working_dir"]
    assert working_dir.startswith("local://")  # the only local folder a Serve config takes
    assert Path(working_dir.removeprefix("local://"), "_shared_ingress.py").is_file()
    assert plain["args"]["app_name"] == "corral"
    # The deployment it looks up is one corral's app really has.
    corral_deployments = {d["name"] for d in apps["corral"]["deployments"]}
    assert plain["args"]["deployment"] == llm_deployment_name(fleet.arms[0].name) in corral_deployments
    assert model_of == {"corral": fleet.routes[0].name, "plain": fleet.arms[0].name}
    ServeDeploySchema(applications=list(apps.values()))  # what Serve's REST API checks before deploying
    # A/A: a second plain ingress takes corral's place.
    apps, app_of, model_of = layout(fleet, tmp_path, "shared", control=True)
    assert app_of["corral"] == "twin" and apps["twin"]["import_path"] == "_shared_ingress:build"
    assert model_of["corral"] == fleet.arms[0].name


def test_paired_verdict_uses_neighbouring_requests_and_a_t_interval():
    # Drift: round 2 is 20% slower for both, which a pooled median mixes up; the pairs cancel it.
    def block(seq, phase=0, slot=0):
        b = _block(statistics.median(seq), phase, slot, n=len(seq))
        b.update(latencies_s=sorted(seq), sequence_s=seq, wall_s=sum(seq), output_tokens=32 * len(seq))
        b["output_tokens_per_s"] = b["output_tokens"] / b["wall_s"]
        return b

    plain = [[4.0, 4.4, 3.6, 4.2], [4.8, 5.3, 4.3, 5.0]]
    corral = [[x * 1.01 for x in seq] for seq in plain]
    s = summarize("1", {"corral": [block(c) for c in corral], "plain": [block(p, slot=1) for p in plain]})
    paired = s["paired"]
    assert paired["latency_ratio"]["pairs"] == 8  # request by request
    assert paired["latency_ratio"]["ratio"] == pytest.approx(1.01, abs=1e-3)
    assert paired["latency_ratio"]["ci95"][0] <= 1.01 <= paired["latency_ratio"]["ci95"][1]
    assert paired["throughput_ratio"]["ratio"] == pytest.approx(1 / 1.01, abs=1e-3)
    assert paired["goal_met_by_estimate"] and paired["goal_met_at_95pct"]
    # Noisy pairs: the estimate may meet the goal while its interval does not.
    corral[0] = [4.0 * 1.15, 4.4 * 0.9, 3.6 * 1.12, 4.2 * 0.88]
    s = summarize("1", {"corral": [block(c) for c in corral], "plain": [block(p, slot=1) for p in plain]})
    assert not s["paired"]["goal_met_at_95pct"]
