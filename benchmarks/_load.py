"""A small closed-loop HTTP load generator shared by the serving benchmarks (127.0.0.1 only, bounded)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from corral.common.stats import quantile


def request_body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    """A chat request whose output length is forced (ignore_eos), greedy; SSE with a usage chunk if `stream`."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def completion_tokens(r: aiohttp.ClientResponse, stream: bool) -> int:
    """Completion tokens of one response, read to the end (raises on a malformed one)."""
    if not stream:
        return (await r.json(content_type=None))["usage"]["completion_tokens"]
    tokens = None
    async for raw in r.content:
        line = raw.decode().strip()
        if line.startswith("data: {") and '"usage":{' in line:
            tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    if tokens is None:
        raise ValueError("stream ended without a usage chunk")
    return tokens


async def closed_loop(url: str, model: str, concurrency: int, requests_total: int, max_tokens: int = 32,
                      prompt: str = "Write a short story about a llama.", stream: bool = False) -> dict:
    """`concurrency` workers send `requests_total` chat requests; output length forced with ignore_eos.

    With `stream`, the response is read as SSE to the end and tokens come from the usage chunk.
    """
    latencies: list[float] = []
    out_tokens = 0
    failures = 0
    remaining = requests_total
    body = request_body(model, prompt, max_tokens, stream)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, out_tokens, failures
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    await r.read()
                    failures += 1
                    continue
                tokens = await completion_tokens(r, stream)
            latencies.append(time.perf_counter() - t0)
            out_tokens += tokens

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summary(latencies, out_tokens, failures, wall, concurrency, stream)


def summary(latencies: list[float], out_tokens: int, failures: int, wall: float, concurrency: int,
            stream: bool) -> dict:
    """One block's result: counts, rates over `wall`, p50/p95 (`corral.common.stats`, type 7) and
    the sorted latencies."""
    xs = sorted(latencies)
    return {
        "concurrency": concurrency,
        "stream": stream,
        "requests": len(xs),
        "failures": failures,
        "output_tokens_per_s": round(out_tokens / wall, 2) if wall else None,
        "requests_per_s": round(len(xs) / wall, 3) if wall else None,
        "latency_p50_s": round(quantile(xs, 0.5), 4) if xs else None,
        "latency_p95_s": round(quantile(xs, 0.95), 4) if xs else None,
        "wall_s": round(wall, 4),
        "output_tokens": out_tokens,
        "latencies_s": [round(x, 4) for x in xs],
    }


async def alternating(targets: dict[str, tuple[str, str]], pairs: int, max_tokens: int = 32,
                      prompt: str = "Write a short story about a llama.", stream: bool = False) -> dict[str, dict]:
    """One request at a time, taking turns between `targets` (name -> (url, model)) request by request.

    Neighbouring requests see the same machine, so slow drifts (other processes, thermal, the
    scheduler) hit every target alike; the order inside each pair alternates so neither target
    always goes first. Returns one `summary` per target, its `wall_s` the sum of that target's
    request times.
    """
    names = list(targets)
    lat: dict[str, list[float]] = {n: [] for n in names}
    tokens = {n: 0 for n in names}
    failures = {n: 0 for n in names}
    bodies = {n: request_body(model, prompt, max_tokens, stream) for n, (_, model) in targets.items()}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for i in range(pairs):
            for name in (names if i % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                async with session.post(f"{targets[name][0]}/v1/chat/completions", json=bodies[name]) as r:
                    if r.status != 200:
                        await r.read()
                        failures[name] += 1
                        continue
                    got = await completion_tokens(r, stream)
                lat[name].append(time.perf_counter() - t0)
                tokens[name] += got
    # At one request at a time a target's busy time is the sum of its request times.
    # `sequence_s` keeps the order, so the i-th requests of two targets (neighbours in time) pair up.
    return {n: {**summary(lat[n], tokens[n], failures[n], sum(lat[n]), 1, stream), "interleaved": True,
                "sequence_s": [round(x, 4) for x in lat[n]]} for n in names}


def run(url: str, model: str, concurrency: int, requests_total: int, max_tokens: int = 32, stream: bool = False) -> dict:
    return asyncio.run(closed_loop(url, model, concurrency, requests_total, max_tokens, stream=stream))
