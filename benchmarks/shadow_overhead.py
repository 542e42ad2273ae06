"""What shadowing costs the user: corral's ingress with and without a shadow copy of every request,
over engine stand-ins, in one process (the method of ingress_overhead.py).

The baseline arm answers at once (the worst case: the ingress's own work is all there is to the
user's latency, so the copy's work weighs most). The shadow arm is a stand-in that takes
`--candidate-delay-ms` per streamed token (a slow candidate): copies pile up to `max_in_flight`
and the rest are dropped, as on a real fleet with a slow candidate. Shadow at 100% (every request
is copied or dropped: the most work shadowing can add). The copies run in the same event loop as
the user's requests (as in the ingress replica), so their reading, parsing and metrics are in the
measured time. Not included, and the same for both: the HTTP proxy, the Serve handle hops, body
parsing, Ray's metrics export.

Paired design: every round runs one block per ingress in alternating order; ratios are per round
(shadow / no shadow) with a 95% t interval over rounds (geometric mean). Levels: c=1 and c=16
concurrent users, streaming and not.

    .venv/bin/python benchmarks/shadow_overhead.py [--rounds 20] [--requests 200] [--tokens 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingress_overhead import StandInArm, block, paired  # noqa: E402


class SlowArm(StandInArm):
    """A candidate stand-in: `delay_s` per streamed token (and per whole answer)."""

    def __init__(self, tokens: int, delay_s: float) -> None:
        super().__init__(tokens)
        self.delay_s, self.calls = delay_s, 0

    async def _run(self, body):
        self.calls += 1
        if body.stream:
            for packet in self.stream_packets(body):
                await asyncio.sleep(self.delay_s)
                yield [packet]
        else:
            await asyncio.sleep(self.delay_s * len(self.packets_with_usage))
            yield self.full


class Drops:
    """Counts what the shadow records (stands in for Ray's exporter, absent here)."""

    def __init__(self) -> None:
        from corral.serving.shadow import ShadowMetrics

        self.real = ShadowMetrics()  # the real recording calls run, as in the ingress
        self.copies = self.n_dropped = 0

    def record(self, *args) -> None:
        self.copies += 1
        self.real.record(*args)

    def dropped(self, route, arm, reason) -> None:
        self.n_dropped += 1
        self.real.dropped(route, arm, reason)


def build(shadow: bool, tokens: int, delay_s: float, max_in_flight: int):
    from corral.serving._ray_compat import ModelCard
    from corral.serving.ingress import CorralIngress

    cards = {a: ModelCard(id=a, object="model", owned_by="bench", permission=[], metadata={}) for a in ("base", "cand")}
    ingress = CorralIngress({"base": StandInArm(tokens), "cand": SlowArm(tokens, delay_s)}, cards)
    config = {"routes": {"route": {"base": 100, "cand": 0}}}
    if shadow:
        config["shadow"] = {"route": {"arm": "cand", "percent": 100, "max_in_flight": max_in_flight}}
    ingress.reconfigure(config)
    counts = Drops()
    ingress._shadow._metrics = counts
    return ingress, counts


async def level(concurrency: int, stream: bool, rounds: int, requests: int, tokens: int, delay_s: float,
                max_in_flight: int) -> dict:
    apps = {kind: build(kind == "shadow", tokens, delay_s, max_in_flight) for kind in ("plain", "shadow")}
    for ingress, _ in apps.values():  # warm-up
        await block(ingress, "route", concurrency, min(requests, 64), stream)
    p50, p99, tput = [], [], []
    p50_s: dict[str, list[float]] = {"plain": [], "shadow": []}
    for r in range(rounds):
        order = ("plain", "shadow") if r % 2 == 0 else ("shadow", "plain")
        got = {kind: await block(apps[kind][0], "route", concurrency, requests, stream) for kind in order}
        for kind in got:
            p50_s[kind].append(got[kind]["p50_s"])
        p50.append(got["shadow"]["p50_s"] / got["plain"]["p50_s"])
        p99.append(got["shadow"]["p99_s"] / got["plain"]["p99_s"])
        tput.append(got["shadow"]["requests_per_s"] / got["plain"]["requests_per_s"])
    ingress, counts = apps["shadow"]
    while ingress._shadow._tasks:  # let the last copies finish before counting
        await asyncio.sleep(0.01)
    return {
        "concurrency": concurrency, "stream": stream, "tokens_per_response": tokens,
        "p50_ms_median_over_rounds": {k: round(1000 * statistics.median(v), 4) for k, v in p50_s.items()},
        "p50_latency_ratio_shadow_vs_plain": paired(p50), "p99_latency_ratio_shadow_vs_plain": paired(p99),
        "throughput_ratio_shadow_vs_plain": paired(tput),
        "shadow_copies_answered": counts.copies, "shadow_copies_dropped": counts.n_dropped,
        "candidate_calls": ingress._default_serve_handles["cand"].calls,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="paired rounds per level")
    ap.add_argument("--requests", type=int, default=200, help="requests per block")
    ap.add_argument("--tokens", type=int, default=64, help="tokens (stream chunks) per response")
    ap.add_argument("--candidate-delay-ms", type=float, default=2.0, help="the shadow arm's time per token")
    ap.add_argument("--max-in-flight", type=int, default=4, help="shadow copies in flight (the spec's default)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the interval needs two pairs)")
    import logging

    logging.disable(logging.WARNING)
    delay = args.candidate_delay_ms / 1000
    levels = [asyncio.run(level(c, s, args.rounds, args.requests, args.tokens, delay, args.max_in_flight))
              for c in (1, 16) for s in (False, True)]
    out = {
        "benchmark": "shadow_overhead", "where": f"in-process, {platform.processor() or platform.machine()}, "
                                                 f"python {platform.python_version()}",
        "what": "corral's ingress with a 100% shadow to a slow candidate vs without shadow, over an instant "
                "baseline stand-in; no HTTP proxy, no Serve handle hop, no Ray metrics export",
        "rounds": args.rounds, "requests_per_block": args.requests, "candidate_delay_ms_per_token": args.candidate_delay_ms,
        "max_in_flight": args.max_in_flight, "levels": levels,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
