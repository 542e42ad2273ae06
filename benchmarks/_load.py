"""A small closed-loop HTTP load helper shared by the serving benchmarks (127.0.0.1 only, bounded)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import aiohttp


async def closed_loop(url: str, model: str, concurrency: int, requests_total: int, max_tokens: int = 32,
                      prompt: str = "Write a short story about a llama.", stream: bool = False) -> dict:
    """`concurrency` workers send `requests_total` chat requests; output length forced with ignore_eos.

    With `stream`, the response is read as SSE to the end and tokens come from the usage chunk.
    """
    latencies: list[float] = []
    out_tokens = 0
    failures = 0
    remaining = requests_total
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})

    async def read(r: aiohttp.ClientResponse) -> int:
        """Completion tokens of one response (raises on a malformed one)."""
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
                tokens = await read(r)
            latencies.append(time.perf_counter() - t0)
            out_tokens += tokens

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency,
        "stream": stream,
        "requests": len(latencies),
        "failures": failures,
        "output_tokens_per_s": round(out_tokens / wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 4) if latencies else None,
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 4) if latencies else None,
        "wall_s": round(wall, 4),
        "output_tokens": out_tokens,
        "latencies_s": [round(x, 4) for x in latencies],
    }


def run(url: str, model: str, concurrency: int, requests_total: int, max_tokens: int = 32, stream: bool = False) -> dict:
    return asyncio.run(closed_loop(url, model, concurrency, requests_total, max_tokens, stream=stream))
