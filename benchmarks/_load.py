"""A small closed-loop HTTP load generator shared by the serving benchmarks (127.0.0.1 only, bounded)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from corral.common.openai_http import apost
from corral.common.stats import quantile


def request_body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    """A chat request whose output length is forced (ignore_eos), greedy; SSE with a usage chunk if `stream`."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def measured(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[float, int] | None:
    """(latency, completion tokens) of one request read to its end (`corral.common.openai_http`);
    None when it failed (not 200, a broken stream, or no usage)."""
    reply = await apost(session, url, body)
    if not reply.ok or reply.output_tokens is None:
        return None
    return reply.e2e_s, reply.output_tokens


async def closed_loop(url: str, model: str, concurrency: int, requests_total: int, max_tokens: int = 32,
                      prompt: str = "Write a short story about a llama.", stream: bool = False) -> dict:
    """`concurrency` workers send `requests_total` chat requests; output length forced with ignore_eos.

    With `stream`, the response is read as SSE to the end and tokens come from the usage chunk.
    A request's latency is send to end of response, as `corral.common.openai_http` measures it.
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
            got = await measured(session, url, body)
            if got is None:
                failures += 1
                continue
            latencies.append(got[0])
            out_tokens += got[1]

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
                got = await measured(session, targets[name][0], bodies[name])
                if got is None:
                    failures[name] += 1
                    continue
                lat[name].append(got[0])
                tokens[name] += got[1]
    # At one request at a time a target's busy time is the sum of its request times.
    # `sequence_s` keeps the order, so the i-th requests of two targets (neighbours in time) pair up.
    return {n: {**summary(lat[n], tokens[n], failures[n], sum(lat[n]), 1, stream), "interleaved": True,
                "sequence_s": [round(x, 4) for x in lat[n]]} for n in names}


def run(url: str, model: str, concurrency: int, requests_total: int, max_tokens: int = 32, stream: bool = False) -> dict:
    return asyncio.run(closed_loop(url, model, concurrency, requests_total, max_tokens, stream=stream))
