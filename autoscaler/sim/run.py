"""The run loop: arrivals, routing, replicas, metric samples and Serve's controller, in simulated time.

* Router: a request goes to the ready replica with the fewest ongoing requests that has
  fewer than `max_ongoing_requests`; otherwise it waits at the handle (Serve's queue).
  (Serve's router samples two replicas; least-loaded is a slightly idealised version.)
* Replicas take `cold_start_s` from being asked for to serving, and count toward
  replica-seconds from the moment they are asked for. A removed replica stops taking
  requests, finishes the ones it holds, then stops (graceful drain).
* Controller: every `tick_s` builds a Ray `AutoscalingContext` (ongoing and queued
  requests averaged over `look_back_period_s`, sampled every `metrics_interval_s`; recent
  per-replica TTFT and ITL p95 and, averaged over the same window, each replica's queued
  prompt tokens as custom metrics) and asks the policy for a target.
* Work rates (what a live replica reports from vLLM's iteration stats): requests prefilled,
  prompt tokens prefilled and output tokens decoded per second by each replica, over the
  look-back window (from the first to the last sample in it).
* Queued prompt tokens (what a live replica reports from vLLM's `get_num_queued_tokens`): the
  prompt lengths of the requests a replica holds that have no first token yet (waiting in its
  engine, or admitted with their prefill still running).

* Faults (`replica_mtbf_s`): serving replicas fail at random (exponential lifetimes, seeded by
  `fault_seed`, the same fault process for every policy). A failed replica stops at once; the
  requests it holds fail (they count as missing the SLO), and Serve starts a replacement to keep
  the target, which serves a cold start later (as Serve's deployment state replaces a dead replica).
  Replicas still starting do not fail; replicas finishing their requests after a scale-down do. The
  fleet's failure rate is min(serving, max_replicas) / replica_mtbf_s (serving exceeds
  max_replicas only while such replicas finish). The replacement is asked at the next controller
  tick; Serve learns of a crashed replica from its health check (`ActorReplicaWrapper.check_health`
  in `ray/serve/_private/deployment_state.py`, every `health_check_period_s`, 10 s by default), so
  the simulated replacement may come up to that much earlier than Serve's.

A request meets its SLO when its TTFT <= ttft_slo_s and its mean inter-token latency
<= itl_slo_s.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from corral.autoscaler.policy import (
    LAST_DECISION_KEY,
    METRIC_ITL_P95,
    METRIC_OUTPUT_TOKENS_PER_S,
    METRIC_PROMPT_TOKENS_PER_S,
    METRIC_QUEUED_PROMPT_TOKENS,
    METRIC_REQUESTS_PER_S,
    METRIC_TTFT_P95,
)
from corral.autoscaler.sim.policies import PolicyFn, serve_controller_step
from corral.autoscaler.sim.replica import LatencyCurve, Replica, Seq
from corral.autoscaler.sim.workload import Request
from corral.cluster.spec.autoscaling import max_ongoing_requests
from corral.common.engine_model import DEFAULT_MAX_NUM_BATCHED_TOKENS
from corral.common.stats import percentile


@dataclass(frozen=True)
class SimConfig:
    """The simulated arm and controller."""

    ttft_slo_s: float = 2.0
    itl_slo_s: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 64
    initial_replicas: int = 1
    max_num_seqs: int = 32
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    """vLLM's per-step token budget (decodes and prompt chunks together)."""
    cold_start_s: float = 60.0
    tick_s: float = 1.0
    """Controller period (Serve's is 0.1 s; decisions use windowed metrics either way)."""
    metrics_interval_s: float = 2.0
    look_back_period_s: float = 20.0
    replica_mtbf_s: float = 0.0
    """Mean time between failures of one serving replica, seconds (exponential); 0 = no faults."""
    fault_seed: int = 0
    """Seed of the fault process (which moments and which replicas)."""

    def __post_init__(self) -> None:
        if self.replica_mtbf_s < 0:
            raise ValueError(f"replica_mtbf_s must be >= 0 (0 = no faults), got {self.replica_mtbf_s}")

    @property
    def max_ongoing_requests(self) -> int:
        # The deployment's max_ongoing_requests: the one rule the serving app applies.
        return max_ongoing_requests(self.max_num_seqs)


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
    ok: np.ndarray | None = None
    """Per request: met its SLO."""
    ttft: np.ndarray | None = None
    """Per request: time to first token, seconds."""
    itl: np.ndarray | None = None
    """Per request: mean inter-token latency, seconds."""
    feasible_attainment: float | None = None
    """Oracle runs (`calibrated_oracle`): what its most generous plan attained."""
    failure_times_s: list[float] | None = None
    """With faults (`SimConfig.replica_mtbf_s`): when each failed replica failed."""
    failed_requests: int | None = None
    """With faults: requests lost with a failed replica."""

    @property
    def replica_failures(self) -> int | None:
        """With faults: replicas that failed."""
        return None if self.failure_times_s is None else len(self.failure_times_s)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"slo_attainment": round(float(self.slo_attainment), 5),
                               "replica_seconds": round(float(self.replica_seconds), 1),
                               "scale_events": self.scale_events, "ttft_p95_s": round(self.ttft_p95_s, 3),
                               "itl_p95_s": round(self.itl_p95_s, 4),
                               "mean_replicas": round(float(self.mean_replicas), 2), "requests": self.requests}
        if self.replica_failures is not None:
            out.update(replica_failures=self.replica_failures, failed_requests=self.failed_requests)
        return out


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
    return percentile(values, 95)


class _Run:
    """One policy over one workload: the state of the fleet and the event handlers."""

    def __init__(self, requests: list[Request], policy: PolicyFn, serve_config: Any, sim: SimConfig,
                 curve: LatencyCurve, name: str):
        self.requests, self.policy, self.serve_config = requests, policy, serve_config
        self.sim, self.curve, self.name = sim, curve, name
        n = len(requests)
        self.ttft = np.full(n, np.nan)
        self.itl = np.full(n, np.nan)
        self.replicas = [Replica(rid=i, asked_s=0.0, ready_s=0.0, token_budget=sim.max_num_batched_tokens) for i in range(sim.initial_replicas)]
        self.handle_queue: deque[int] = deque()
        self.target = sim.initial_replicas
        self.policy_state: dict = {}
        self.samples: deque = deque()  # (t, ongoing, queued)
        self.prompt_samples: deque = deque()  # (t, {replica id: queued prompt tokens})
        self.work_samples: deque = deque()  # (t, {replica id: (prefills, prompt tokens, output tokens) so far})
        self.recent: deque = deque()  # (t_done, replica, ttft, itl) of finished requests
        self.decisions: list[tuple[float, int, str]] = []
        self.tl: dict[str, list[float]] = {"t": [], "target": [], "ready": [], "ongoing": [], "queued": []}
        self.scale_events = 0
        # Faults: candidate moments at the rate max_replicas / mtbf, each a failure of one of the serving
        # replicas with probability serving / max_replicas (thinning: min(serving, max_replicas) / mtbf).
        self.failure_times: list[float] = []
        self.failed_requests = 0
        self.fault_rng = np.random.default_rng(sim.fault_seed) if sim.replica_mtbf_s > 0 else None
        self.next_fault = self.next_fault_after(0.0)

    # -- fleet
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.stopped_s is None and not r.draining]

    def queued_prompt_tokens(self, rep: Replica, now: float) -> int:
        """Prompt tokens of the requests `rep` holds that have no first token yet."""
        waiting = sum(self.requests[i].context_tokens for i in rep.waiting)
        return waiting + sum(self.requests[s.req].context_tokens for s in rep.running if s.prompt_left > 0)

    def in_system(self) -> int:
        return sum(r.ongoing() for r in self.replicas if r.stopped_s is None) + len(self.handle_queue)

    def admit(self, rep: Replica, now: float) -> None:
        # Move engine-waiting requests into the running batch; their prompts are computed in the
        # steps to come (`Replica.advance`).
        while rep.waiting and len(rep.running) < self.sim.max_num_seqs:
            i = rep.waiting.popleft()
            req = self.requests[i]
            rep.prefills += 1
            rep.running.append(Seq(i, req.generated_tokens, float(max(1, req.context_tokens))))

    def route(self, now: float) -> None:
        ready = [r for r in self.live() if r.ready_s <= now]
        while self.handle_queue and ready:
            rep = min(ready, key=lambda r: (r.ongoing(), r.rid))
            if rep.ongoing() >= self.sim.max_ongoing_requests:
                break
            i = self.handle_queue.popleft()
            rep.advance(now, self.curve)
            rep.waiting.append(i)
            self.admit(rep, now)

    def complete(self, rep: Replica, now: float) -> None:
        rep.advance(now, self.curve)
        done = [s for s in rep.running if s.done_at_v <= rep.v + 1e-6]
        if not done:
            return
        rep.running = [s for s in rep.running if s.done_at_v > rep.v + 1e-6]
        for s in done:
            g = self.requests[s.req].generated_tokens
            self.ttft[s.req] = s.first_token_s - self.requests[s.req].arrival_s
            self.itl[s.req] = (now - s.first_token_s) / (g - 1) if g > 1 else 0.0
            self.recent.append((now, rep.rid, self.ttft[s.req], self.itl[s.req]))
        self.admit(rep, now)
        if rep.draining and rep.ongoing() == 0:
            rep.stopped_s = now

    def resize(self, new_target: int, now: float) -> None:
        active = self.live()
        if new_target > len(active):
            for _ in range(new_target - len(active)):
                self.replicas.append(Replica(rid=len(self.replicas), asked_s=now, ready_s=now + self.sim.cold_start_s,
                                             token_budget=self.sim.max_num_batched_tokens,
                                             last_s=now))
        elif new_target < len(active):
            # Serve stops replicas that are still starting first, then the least busy.
            victims = sorted(active, key=lambda r: (r.ready_s <= now, r.ongoing(), -r.rid))[: len(active) - new_target]
            for rep in victims:
                rep.advance(now, self.curve)
                rep.draining = True
                # Engine-waiting requests are handed back to the handle queue (not dropped).
                while rep.waiting:
                    self.handle_queue.appendleft(rep.waiting.pop())
                if rep.ongoing() == 0:
                    rep.stopped_s = now

    def next_fault_after(self, now: float) -> float:
        if self.fault_rng is None:
            return math.inf
        return now + float(self.fault_rng.exponential(self.sim.replica_mtbf_s / self.sim.max_replicas))

    def fault(self, now: float) -> None:
        """A candidate fault moment: one serving replica fails with probability serving / max_replicas."""
        assert self.fault_rng is not None
        accept, pick = self.fault_rng.uniform(), self.fault_rng.uniform()  # both drawn: one stream for all policies
        serving = sorted((r for r in self.replicas if r.stopped_s is None and r.ready_s <= now), key=lambda r: r.rid)
        if not serving or accept >= len(serving) / self.sim.max_replicas:
            return
        rep = serving[int(pick * len(serving))]
        self.failed_requests += len(rep.running) + len(rep.waiting)
        rep.running, rep.waiting = [], deque()
        rep.stopped_s = now
        self.failure_times.append(now)

    # -- controller
    def context(self, now: float) -> Any:
        sim = self.sim
        while self.samples and self.samples[0][0] < now - sim.look_back_period_s:
            self.samples.popleft()
        while self.recent and self.recent[0][0] < now - sim.look_back_period_s:
            self.recent.popleft()
        while self.prompt_samples and self.prompt_samples[0][0] < now - sim.look_back_period_s:
            self.prompt_samples.popleft()
        while self.work_samples and self.work_samples[0][0] < now - sim.look_back_period_s:
            self.work_samples.popleft()
        ready = [r for r in self.live() if r.ready_s <= now]
        per_rep: dict[int, tuple[list[float], list[float]]] = {}
        for _, rid, tt, it in self.recent:
            a, b = per_rep.setdefault(rid, ([], []))
            a.append(tt)
            b.append(it)
        ready_ids = {r.rid for r in ready}
        metrics = {METRIC_TTFT_P95: {f"r{rid}": _p95(a) for rid, (a, _) in per_rep.items() if rid in ready_ids},
                   METRIC_ITL_P95: {f"r{rid}": _p95(b) for rid, (_, b) in per_rep.items() if rid in ready_ids}}
        # Serve averages each replica's custom metric over the window (MEAN aggregation).
        tokens: dict[int, list[int]] = {}
        for _, per in self.prompt_samples:
            for rid, v in per.items():
                tokens.setdefault(rid, []).append(v)
        metrics[METRIC_QUEUED_PROMPT_TOKENS] = {f"r{rid}": float(np.mean(v)) for rid, v in tokens.items()
                                                if rid in ready_ids}
        if len(self.work_samples) >= 2:
            (t0, first), (t1, last) = self.work_samples[0], self.work_samples[-1]
            both = [rid for rid in last if rid in first and rid in ready_ids]
            for k, name in enumerate((METRIC_REQUESTS_PER_S, METRIC_PROMPT_TOKENS_PER_S, METRIC_OUTPUT_TOKENS_PER_S)):
                metrics[name] = {f"r{rid}": (last[rid][k] - first[rid][k]) / (t1 - t0) for rid in both}
        total = float(np.mean([s[1] for s in self.samples])) if self.samples else 0.0
        queued = float(np.mean([s[2] for s in self.samples])) if self.samples else 0.0
        return _make_ctx(
            deployment_id=None, deployment_name=self.name, app_name="sim", current_num_replicas=len(ready),
            target_num_replicas=self.target, running_replicas=[f"r{r.rid}" for r in ready], total_num_requests=total,
            total_queued_requests=queued, aggregated_metrics=metrics, raw_metrics={},
            capacity_adjusted_min_replicas=sim.min_replicas, capacity_adjusted_max_replicas=sim.max_replicas,
            policy_state=dict(self.policy_state), last_scale_up_time=None, last_scale_down_time=None,
            current_time=now, config=self.serve_config)

    def tick(self, now: float) -> None:
        ctx = self.context(now)
        new_target, self.policy_state = serve_controller_step(self.policy, ctx, self.serve_config, now)
        if new_target != self.target:
            self.scale_events += 1
            why = (self.policy_state.get(LAST_DECISION_KEY) or {}).get("reason", "")
            self.decisions.append((now, new_target, why))
            self.target = new_target
        self.resize(self.target, now)
        self.tl["t"].append(now)
        self.tl["target"].append(self.target)
        self.tl["ready"].append(ctx.current_num_replicas)
        self.tl["ongoing"].append(self.in_system())
        self.tl["queued"].append(len(self.handle_queue))

    # -- loop
    def next_completion(self) -> tuple[Replica | None, float]:
        comp_rep, tc = None, math.inf
        for r in self.replicas:
            if r.stopped_s is None and r.running:
                t = r.next_event_s(self.curve)
                if t < tc:
                    comp_rep, tc = r, t
        return comp_rep, tc

    def run(self) -> float:
        """Events in time order: completions, arrivals, replicas becoming ready, metric samples,
        controller ticks. Returns when every request is done, after the last arrival."""
        n = len(self.requests)
        arrival = [r.arrival_s for r in self.requests]
        next_arrival, next_tick, next_sample, now = 0, 0.0, 0.0, 0.0
        end_s = arrival[-1] if n else 0.0
        while True:
            finished = next_arrival >= n and not self.handle_queue and all(
                r.ongoing() == 0 for r in self.replicas if r.stopped_s is None)
            if finished and now > end_s:
                return now
            ta = arrival[next_arrival] if next_arrival < n else math.inf
            comp_rep, tc = self.next_completion()
            tr = min((r.ready_s for r in self.replicas if r.stopped_s is None and r.ready_s > now), default=math.inf)
            now = min(ta, tc, next_tick, next_sample, tr, self.next_fault)
            if now == self.next_fault:
                self.fault(now)
                self.next_fault = self.next_fault_after(now)
            elif now == tc and comp_rep is not None:
                self.complete(comp_rep, now)
                self.route(now)
            elif now == ta:
                self.handle_queue.append(next_arrival)
                next_arrival += 1
                self.route(now)
            elif now == tr:
                self.route(now)
            elif now == next_sample:
                self.samples.append((now, self.in_system(), len(self.handle_queue)))
                self.prompt_samples.append((now, {r.rid: self.queued_prompt_tokens(r, now) for r in self.live()
                                                  if r.ready_s <= now}))
                work = {}
                for r in self.live():
                    if r.ready_s <= now:
                        r.advance(now, self.curve)
                        work[r.rid] = (r.prefills, r.prompt_tokens, r.output_tokens)
                self.work_samples.append((now, work))
                next_sample += self.sim.metrics_interval_s
            else:
                self.tick(now)
                next_tick += self.sim.tick_s

    def result(self, stop_all: float) -> SimResult:
        n, sim = len(self.requests), self.sim
        faults = self.fault_rng is not None
        replica_seconds = sum((r.stopped_s if r.stopped_s is not None else stop_all) - r.asked_s for r in self.replicas)
        ok = (self.ttft <= sim.ttft_slo_s) & (self.itl <= sim.itl_slo_s)
        p95 = lambda a: percentile([float(x) for x in a if not math.isnan(x)], 95) or 0.0  # noqa: E731
        return SimResult(
            policy=self.name, slo_attainment=float(ok.mean()) if n else 1.0, replica_seconds=replica_seconds,
            scale_events=self.scale_events, ttft_p95_s=p95(self.ttft) if n else 0.0,
            itl_p95_s=p95(self.itl) if n else 0.0, requests=n, mean_replicas=replica_seconds / max(stop_all, 1e-9),
            timeline=self.tl, decisions=self.decisions, ok=ok, ttft=self.ttft, itl=self.itl,
            failure_times_s=self.failure_times if faults else None,
            failed_requests=self.failed_requests if faults else None)


def simulate(requests: list[Request], policy: PolicyFn, serve_config: Any, sim: SimConfig, curve: LatencyCurve,
             name: str = "policy") -> SimResult:
    """Run one policy over the requests. `serve_config` is a ray.serve.config.AutoscalingConfig
    (as Serve would hold it for the deployment); `policy` is called like Serve calls it."""
    run = _Run(requests, policy, serve_config, sim, curve, name)
    return run.result(run.run())
