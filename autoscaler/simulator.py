"""Discrete-event simulator of one arm's replicas under Ray Serve autoscaling.

It replays a request trace (e.g. the Azure LLM conversation trace), routes requests to
replicas, runs each replica as a continuous-batching engine whose decode step time comes
from a latency-vs-batch curve, and calls an autoscaling policy the way Serve's controller
does: through the same `policy(ctx) -> (replicas, policy_state)` interface, with Ray's own
wrapper functions (scaling factors, delays) applied on top. corral's policy runs here
unchanged (`corral.autoscaler.policy.CorralAutoscalingPolicy`).

Model, and what it leaves out (so results are read for what they are):

* Replica = vLLM-like engine: up to `max_num_seqs` sequences decode together; one decode
  step emits a token for each and takes `curve.itl(batch)` seconds. Admitting a sequence
  runs its prefill (`curve.prefill(context_tokens)`), during which the replica's decoding
  pauses (vLLM without chunked prefill; chunked prefill spreads the same cost).
  Requests beyond `max_num_seqs` wait in the engine, FIFO. KV cache limits are not modelled.
* Router: a request goes to the ready replica with the fewest ongoing requests that has
  fewer than `max_ongoing_requests`; otherwise it waits at the handle (Serve's queue).
  (Serve's router samples two replicas; least-loaded is a slightly idealised version.)
* Replicas take `cold_start_s` from being asked for to serving, and count toward
  replica-seconds from the moment they are asked for. A removed replica stops taking
  requests, finishes the ones it holds, then stops (graceful drain).
* Controller: every `tick_s` builds a Ray `AutoscalingContext` (ongoing and queued
  requests averaged over `look_back_period_s`, sampled every `metrics_interval_s`; recent
  per-replica TTFT and ITL p95 as custom metrics) and asks the policy for a target.

A request meets its SLO when its TTFT <= ttft_slo_s and its mean inter-token latency
<= itl_slo_s.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from corral.autoscaler.policy import LAST_DECISION_KEY, METRIC_ITL_P95, METRIC_TTFT_P95

CURVES_DIR = Path(__file__).resolve().parent / "curves"
DEFAULT_TRACE = Path("../shared/traces/azure_llm_conv_2023.csv")


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class LatencyCurve:
    """Per-replica latency vs batch size (decode step) plus prefill cost per prompt token."""

    batch: tuple[int, ...]
    """Batch sizes measured (ascending)."""
    itl_s: tuple[float, ...]
    """Decode step latency at each batch size, seconds (= inter-token latency)."""
    prefill_s_per_token: float = 0.0002
    """Prefill time per prompt token, seconds."""
    prefill_base_s: float = 0.01
    """Fixed prefill overhead per request, seconds."""
    name: str = "curve"
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.batch) != len(self.itl_s) or len(self.batch) < 2:
            raise ValueError(f"batch ({len(self.batch)} points) and itl_s ({len(self.itl_s)}) must match, >= 2 points")
        if list(self.batch) != sorted(self.batch) or min(self.itl_s) <= 0:
            raise ValueError(f"batch must ascend and itl_s be > 0; got batch={self.batch} itl_s={self.itl_s}")

    @classmethod
    def load(cls, path: str | Path) -> LatencyCurve:
        data = json.loads(Path(path).read_text())
        return cls(batch=tuple(data["batch"]), itl_s=tuple(data["itl_s"]),
                   prefill_s_per_token=data.get("prefill_s_per_token", 0.0002),
                   prefill_base_s=data.get("prefill_base_s", 0.01),
                   name=data.get("name", Path(path).stem), source=data.get("source", ""))

    @classmethod
    def default(cls) -> LatencyCurve:
        return cls.load(CURVES_DIR / "default.json")

    def itl(self, batch: int) -> float:
        # Linear between points; beyond the last point, extrapolate the last slope.
        b = max(batch, 1)
        if b <= self.batch[-1]:
            return float(np.interp(b, self.batch, self.itl_s))
        slope = (self.itl_s[-1] - self.itl_s[-2]) / (self.batch[-1] - self.batch[-2])
        return self.itl_s[-1] + slope * (b - self.batch[-1])

    def prefill(self, tokens: int) -> float:
        return self.prefill_base_s + self.prefill_s_per_token * tokens

    def knee(self) -> int:
        """Batch at the knee of latency vs batch: the one maximising throughput / latency
        (b / itl(b)^2), i.e. where more batch starts costing more latency than it earns."""
        return max(range(1, self.batch[-1] + 1), key=lambda b: b / self.itl(b) ** 2)


@dataclass(frozen=True)
class Request:
    arrival_s: float
    context_tokens: int
    generated_tokens: int


def load_trace(path: str | Path = DEFAULT_TRACE, speedup: float = 1.0, limit_s: float | None = None,
               keep: float = 1.0, token_scale: float = 1.0, seed: int = 0) -> list[Request]:
    """Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens) -> requests from t=0.
    `speedup` compresses time (arrivals `speedup` times denser); `limit_s` cuts the
    compressed trace; `keep` keeps a seeded random share of the requests and `token_scale`
    shrinks their lengths (the same thinning the live load test applies, so a trace can be
    fitted to a small model's measured curve)."""
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    if not 0 < keep <= 1 or not 0 < token_scale <= 1:
        raise ValueError(f"keep ({keep}) and token_scale ({token_scale}) must lie in (0, 1]")
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["TIMESTAMP"].strip()[:26]).timestamp()
            rows.append((ts, int(row["ContextTokens"]), max(1, int(row["GeneratedTokens"]))))
    rows.sort()
    t0 = rows[0][0]
    rng = np.random.default_rng(seed)
    kept = rng.random(len(rows)) < keep if keep < 1 else np.ones(len(rows), dtype=bool)
    out = [Request((ts - t0) / speedup, max(1, round(c * token_scale)), max(1, round(g * token_scale)))
           for (ts, c, g), k in zip(rows, kept) if k]
    if limit_s is not None:
        out = [r for r in out if r.arrival_s < limit_s]
    return out


def window(requests: list[Request], start_s: float, end_s: float | None = None) -> list[Request]:
    """The requests arriving in [start_s, end_s), moved so that start_s is t=0 (a slice of a
    trace, e.g. to choose settings on one part and judge them on another)."""
    return [replace(r, arrival_s=r.arrival_s - start_s) for r in requests
            if r.arrival_s >= start_s and (end_s is None or r.arrival_s < end_s)]


@dataclass(frozen=True)
class SimConfig:
    """The simulated arm and controller."""

    ttft_slo_s: float = 2.0
    itl_slo_s: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 64
    initial_replicas: int = 1
    max_num_seqs: int = 32
    cold_start_s: float = 60.0
    tick_s: float = 1.0
    """Controller period (Serve's is 0.1 s; decisions use windowed metrics either way)."""
    metrics_interval_s: float = 2.0
    look_back_period_s: float = 20.0

    @property
    def max_ongoing_requests(self) -> int:
        # As serving/app.py configures the deployment.
        return max(2 * self.max_num_seqs, 8)


# ---------------------------------------------------------------- engine


@dataclass
class _Seq:
    req: int
    done_at_v: float  # replica virtual token clock at which the last token is out
    first_token_s: float


@dataclass
class _Replica:
    rid: int
    asked_s: float
    ready_s: float
    running: list[_Seq] = field(default_factory=list)
    waiting: deque = field(default_factory=deque)  # request indices admitted, not yet batched
    v: float = 0.0  # tokens emitted per running sequence so far
    last_s: float = 0.0
    stall_until_s: float = 0.0  # prefill in progress until then: no decoding
    draining: bool = False
    stopped_s: float | None = None

    def ongoing(self) -> int:
        return len(self.running) + len(self.waiting)

    def advance(self, t: float, curve: LatencyCurve) -> None:
        start = max(self.last_s, self.stall_until_s)
        if self.running and t > start:
            self.v += (t - start) / curve.itl(len(self.running))
        self.last_s = max(self.last_s, t)

    def next_event_s(self, curve: LatencyCurve) -> float:
        if not self.running:
            return math.inf
        start = max(self.last_s, self.stall_until_s)
        left = min(s.done_at_v for s in self.running) - self.v
        return start + max(0.0, left) * curve.itl(len(self.running))


@dataclass
class SimResult:
    policy: str
    slo_attainment: float
    replica_seconds: float
    scale_events: int
    ttft_p95_s: float
    itl_p95_s: float
    requests: int
    mean_replicas: float
    timeline: dict[str, list[float]]
    decisions: list[tuple[float, int, str]]

    def summary(self) -> dict[str, Any]:
        return {"slo_attainment": round(float(self.slo_attainment), 5),
                "replica_seconds": round(float(self.replica_seconds), 1),
                "scale_events": self.scale_events, "ttft_p95_s": round(self.ttft_p95_s, 3),
                "itl_p95_s": round(self.itl_p95_s, 4), "mean_replicas": round(float(self.mean_replicas), 2),
                "requests": self.requests}


class _SimCtx:
    """Stands in for ray.serve.config.AutoscalingContext when Ray is not importable; same attributes."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


def _make_ctx(**kw: Any) -> Any:
    try:
        from ray.serve.config import AutoscalingContext
    except ImportError:  # the simulator also runs without Ray (corral's policy needs nothing from it)
        return _SimCtx(**kw)
    return AutoscalingContext(**kw)


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


# ---------------------------------------------------------------- controller path


PolicyFn = Callable[[Any], tuple[float, dict]]


def serve_controller_step(policy: PolicyFn, ctx: Any, serve_config: Any, now: float) -> tuple[int, dict]:
    """What Serve's controller does with a policy's answer: Ray's own cold-start fast path,
    scaling factors and delay logic (`ray.serve.autoscaling_policy`), then min/max bounds.
    Mirrors `_apply_autoscaling_config`, except that the simulated clock is handed to
    `_apply_delay_logic` (Ray's wrapper reads the wall clock)."""
    from ray.serve import autoscaling_policy as rp

    cold = rp._get_cold_start_scale_up_replicas(ctx)
    if cold is not None:
        decided, state = cold, ctx.policy_state
    else:
        internal = rp._extract_internal_policy_state(ctx.policy_state)
        desired, user_state = policy(ctx)
        desired = rp._apply_scaling_factors(desired, ctx.current_num_replicas, serve_config)
        if ctx.current_num_replicas == 0 and desired > 0:
            decided, state = desired, dict(user_state)
        else:
            decided, internal = rp._apply_delay_logic(max(0, desired), ctx.target_num_replicas, serve_config,
                                                       internal, _now=now)
            state = dict(user_state)
            state.update(internal)
    decided = math.ceil(decided)
    return min(max(decided, serve_config.min_replicas), serve_config.max_replicas), state


def simulate(
    requests: list[Request],
    policy: PolicyFn,
    serve_config: Any,
    sim: SimConfig,
    curve: LatencyCurve,
    name: str = "policy",
) -> SimResult:
    """Run one policy over the trace. `serve_config` is a ray.serve.config.AutoscalingConfig
    (as Serve would hold for the deployment); `policy` is called like Serve calls it."""
    n = len(requests)
    arrival = np.array([r.arrival_s for r in requests])
    ttft = np.full(n, np.nan)
    itl = np.full(n, np.nan)
    served_by = np.full(n, -1, dtype=int)

    replicas: list[_Replica] = []
    for _ in range(sim.initial_replicas):
        replicas.append(_Replica(rid=len(replicas), asked_s=0.0, ready_s=0.0))
    handle_queue: deque[int] = deque()
    target = sim.initial_replicas
    policy_state: dict = {}
    samples: deque = deque()  # (t, ongoing, queued)
    recent: deque = deque()  # (t_done, replica, ttft, itl) of finished requests
    decisions: list[tuple[float, int, str]] = []
    tl: dict[str, list[float]] = {"t": [], "target": [], "ready": [], "ongoing": [], "queued": []}
    scale_events = 0

    def live() -> list[_Replica]:
        return [r for r in replicas if r.stopped_s is None and not r.draining]

    def admit(rep: _Replica, now: float) -> None:
        # Move engine-waiting requests into the running batch; each one's prefill pauses decoding.
        while rep.waiting and len(rep.running) < sim.max_num_seqs:
            i = rep.waiting.popleft()
            req = requests[i]
            rep.stall_until_s = max(rep.stall_until_s, now) + curve.prefill(req.context_tokens)
            ttft[i] = rep.stall_until_s - req.arrival_s
            rep.running.append(_Seq(i, rep.v + (req.generated_tokens - 1), rep.stall_until_s))

    def route(now: float) -> None:
        ready = [r for r in live() if r.ready_s <= now]
        while handle_queue and ready:
            rep = min(ready, key=lambda r: (r.ongoing(), r.rid))
            if rep.ongoing() >= sim.max_ongoing_requests:
                break
            i = handle_queue.popleft()
            served_by[i] = rep.rid
            rep.advance(now, curve)
            rep.waiting.append(i)
            admit(rep, now)

    def complete(rep: _Replica, now: float) -> None:
        rep.advance(now, curve)
        if now < rep.stall_until_s:
            return
        done = [s for s in rep.running if s.done_at_v <= rep.v + 1e-6]
        if not done:
            return
        rep.running = [s for s in rep.running if s.done_at_v > rep.v + 1e-6]
        for s in done:
            g = requests[s.req].generated_tokens
            itl[s.req] = (now - s.first_token_s) / (g - 1) if g > 1 else 0.0
            recent.append((now, rep.rid, ttft[s.req], itl[s.req]))
        admit(rep, now)
        if rep.draining and rep.ongoing() == 0:
            rep.stopped_s = now

    def resize(new_target: int, now: float) -> None:
        active = live()
        if new_target > len(active):
            for _ in range(new_target - len(active)):
                replicas.append(_Replica(rid=len(replicas), asked_s=now, ready_s=now + sim.cold_start_s, last_s=now))
        elif new_target < len(active):
            # Serve stops replicas that are still starting first, then the least busy.
            victims = sorted(active, key=lambda r: (r.ready_s <= now, r.ongoing(), -r.rid))[: len(active) - new_target]
            for rep in victims:
                rep.advance(now, curve)
                rep.draining = True
                # Engine-waiting requests are handed back to the handle queue (not dropped).
                while rep.waiting:
                    handle_queue.appendleft(rep.waiting.pop())
                if rep.ongoing() == 0:
                    rep.stopped_s = now

    def tick(now: float) -> None:
        nonlocal target, policy_state, scale_events
        while samples and samples[0][0] < now - sim.look_back_period_s:
            samples.popleft()
        while recent and recent[0][0] < now - sim.look_back_period_s:
            recent.popleft()
        ready = [r for r in live() if r.ready_s <= now]
        per_rep: dict[int, tuple[list[float], list[float]]] = {}
        for _, rid, tt, it in recent:
            a, b = per_rep.setdefault(rid, ([], []))
            a.append(tt)
            b.append(it)
        ready_ids = {r.rid for r in ready}
        metrics = {METRIC_TTFT_P95: {f"r{rid}": _p95(a) for rid, (a, _) in per_rep.items() if rid in ready_ids},
                   METRIC_ITL_P95: {f"r{rid}": _p95(b) for rid, (_, b) in per_rep.items() if rid in ready_ids}}
        total = float(np.mean([s[1] for s in samples])) if samples else 0.0
        queued = float(np.mean([s[2] for s in samples])) if samples else 0.0
        ctx = _make_ctx(
            deployment_id=None, deployment_name=name, app_name="sim", current_num_replicas=len(ready),
            target_num_replicas=target, running_replicas=[f"r{r.rid}" for r in ready], total_num_requests=total,
            total_queued_requests=queued, aggregated_metrics=metrics, raw_metrics={},
            capacity_adjusted_min_replicas=sim.min_replicas, capacity_adjusted_max_replicas=sim.max_replicas,
            policy_state=dict(policy_state), last_scale_up_time=None, last_scale_down_time=None,
            current_time=now, config=serve_config)
        new_target, policy_state = serve_controller_step(policy, ctx, serve_config, now)
        if new_target != target:
            scale_events += 1
            why = (policy_state.get(LAST_DECISION_KEY) or {}).get("reason", "")
            decisions.append((now, new_target, why))
            target = new_target
        resize(target, now)
        tl["t"].append(now)
        tl["target"].append(target)
        tl["ready"].append(len(ready))
        tl["ongoing"].append(sum(r.ongoing() for r in replicas if r.stopped_s is None) + len(handle_queue))
        tl["queued"].append(len(handle_queue))

    # Event loop: arrivals, controller ticks, metric samples, replica completions and readiness.
    next_arrival = 0
    next_tick = 0.0
    next_sample = 0.0
    end_s = arrival[-1] if n else 0.0
    now = 0.0
    while True:
        finished = next_arrival >= n and not handle_queue and all(
            r.ongoing() == 0 for r in replicas if r.stopped_s is None)
        if finished and now > end_s:
            break
        ta = arrival[next_arrival] if next_arrival < n else math.inf
        comp_rep, tc = None, math.inf
        for r in replicas:
            if r.stopped_s is None and r.running:
                t = r.next_event_s(curve)
                if t < tc:
                    comp_rep, tc = r, t
        tr = min((r.ready_s for r in replicas if r.stopped_s is None and r.ready_s > now), default=math.inf)
        now = min(ta, tc, next_tick, next_sample, tr)
        if now == tc and comp_rep is not None:
            complete(comp_rep, now)
            route(now)
        elif now == ta:
            handle_queue.append(next_arrival)
            next_arrival += 1
            route(now)
        elif now == tr:
            route(now)
        elif now == next_sample:
            ongoing = sum(r.ongoing() for r in replicas if r.stopped_s is None) + len(handle_queue)
            samples.append((now, ongoing, len(handle_queue)))
            next_sample += sim.metrics_interval_s
        else:
            tick(now)
            next_tick += sim.tick_s

    stop_all = now
    replica_seconds = sum((r.stopped_s if r.stopped_s is not None else stop_all) - r.asked_s for r in replicas)
    ok = (ttft <= sim.ttft_slo_s) & (itl <= sim.itl_slo_s)
    duration = max(stop_all, 1e-9)
    return SimResult(
        policy=name, slo_attainment=float(ok.mean()) if n else 1.0, replica_seconds=replica_seconds,
        scale_events=scale_events, ttft_p95_s=float(np.nanpercentile(ttft, 95)) if n else 0.0,
        itl_p95_s=float(np.nanpercentile(itl, 95)) if n else 0.0, requests=n,
        mean_replicas=replica_seconds / duration, timeline=tl, decisions=decisions)


# ---------------------------------------------------------------- policies for comparison


def ray_default_policy() -> PolicyFn:
    """Ray Serve's own default policy function (target ongoing requests), unchanged."""
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

    return replica_queue_length_autoscaling_policy


def ideal_concurrency(requests: list[Request], curve: LatencyCurve, batch: int, step_s: float, end_s: float) -> np.ndarray:
    """Requests in service at each `step_s` if every request ran at `batch` with no queueing."""
    grid = np.zeros(int(end_s / step_s) + 2)
    for r in requests:
        dur = curve.prefill(r.context_tokens) + (r.generated_tokens - 1) * curve.itl(batch)
        a, b = int(r.arrival_s / step_s), int((r.arrival_s + dur) / step_s)
        grid[a: b + 1] += 1
    return grid


class OraclePolicy:
    """Offline oracle: knows the whole trace. At each moment it holds exactly the replicas
    that the coming load needs at `target_ongoing` requests each (peak of the ideal
    in-service count over the next `cold_start_s + window_s`), so replicas are ready when
    load arrives and leave as soon as it passes. Run with Serve delays 0."""

    def __init__(self, requests: list[Request], curve: LatencyCurve, target_ongoing: float, cold_start_s: float,
                 window_s: float = 10.0, step_s: float = 1.0, headroom: float = 1.0):
        end = max((r.arrival_s for r in requests), default=0.0) + 600
        conc = ideal_concurrency(requests, curve, int(round(target_ongoing)), step_s, end)
        need = np.ceil(conc * headroom / target_ongoing - 1e-9)
        self.headroom = headroom
        ahead = int((cold_start_s + window_s) / step_s)
        # Running max over [i, i + ahead]: replicas must be asked for cold_start_s early.
        self.plan = np.array([need[i: i + ahead + 1].max() for i in range(len(need))])
        self.step_s = step_s

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        i = min(int(ctx.current_time / self.step_s), len(self.plan) - 1)
        return float(self.plan[i]), {LAST_DECISION_KEY: {"reason": "oracle plan"}}

    def initial(self) -> int:
        return int(self.plan[0])


def run_oracle(requests: list[Request], curve: LatencyCurve, sim: SimConfig, target_ongoing: float,
               headroom: float) -> SimResult:
    oracle = OraclePolicy(requests, curve, target_ongoing, sim.cold_start_s, headroom=headroom)
    init = min(max(oracle.initial(), sim.min_replicas), sim.max_replicas)
    cfg = serve_config(sim.min_replicas, sim.max_replicas, init, target_ongoing, 0.0, 0.0, sim.look_back_period_s)
    return simulate(requests, oracle, cfg, replace(sim, initial_replicas=init), curve, f"oracle(x{headroom:.3g})")


def calibrated_oracle(requests: list[Request], curve: LatencyCurve, sim: SimConfig, target_ongoing: float,
                      goal: float = 0.99, lo: float = 0.5, hi: float = 4.0, steps: int = 6) -> SimResult:
    """The cheapest oracle plan that meets `goal` SLO attainment: bisect the headroom factor
    on the ideal in-service count (the ideal count ignores queueing and prefill stalls, so
    the bare plan, x1, under-provisions). Returns the cheapest run that met the goal (or
    the most generous one tried, if none did)."""
    best = run_oracle(requests, curve, sim, target_ongoing, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        res = run_oracle(requests, curve, sim, target_ongoing, mid)
        if res.slo_attainment >= goal:
            best, hi = res, mid
        else:
            lo = mid
    return best


def serve_config(min_replicas: int, max_replicas: int, initial: int, target: float, upscale_delay_s: float,
                 downscale_delay_s: float, look_back_period_s: float = 20.0, policy: dict | None = None) -> Any:
    """A ray.serve.config.AutoscalingConfig, as Serve would hold it for the deployment."""
    import warnings

    from ray.serve.config import AutoscalingConfig

    kw = dict(min_replicas=min_replicas, max_replicas=max_replicas, initial_replicas=initial,
              target_ongoing_requests=target, upscale_delay_s=upscale_delay_s,
              downscale_delay_s=downscale_delay_s, look_back_period_s=look_back_period_s)
    if policy:
        kw["policy"] = policy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoscalingConfig(**kw)


def replicas_at(timeline: dict[str, list[float]], t: float) -> float:
    i = bisect.bisect_right(timeline["t"], t) - 1
    return timeline["target"][max(i, 0)]


__all__ = [
    "LatencyCurve", "Request", "SimConfig", "SimResult", "OraclePolicy", "load_trace", "window", "simulate",
    "serve_controller_step", "ray_default_policy", "serve_config", "ideal_concurrency", "run_oracle", "calibrated_oracle",
]
