"""Runs a load test with locust as a library, headless.

Importing this module imports locust, which monkey-patches the process for gevent: import it
only in a process dedicated to load generation (the `corral loadtest` command), never in a
test runner or a process that also runs Ray.

Each stage spawns locust users that pull work from a shared stage object:
* closed loop: N users, each sends its next request when the previous one ends;
* open loop: a pool of `max_in_flight` users takes scheduled arrivals in order and sends each
  at its scheduled time. When every user is busy the next send is late; the lag
  (actual - scheduled send time) is recorded per request and a stage whose p99 lag exceeds
  `max_lag_s` is flagged, so a generator that falls behind is reported, not absorbed.
Each HTTP request is reported to locust's own stats once, with its real end-to-end time; the
token metrics (TTFT, ITL, TPOT) live in the per-request records, not in fake locust requests.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import gevent
import gevent.event
import locust  # noqa: F401  (first: gevent must patch sockets before requests is imported)
import requests
from locust import User, constant, task
from locust.env import Environment
from locust.event import Events
from locust.exception import StopUser

from corral.common.openai_http import endpoint_path
from corral.common.stats import percentile
from corral.loadtests.arrivals import Arrival, TokenCalibration, request_body, synthesize_prompt
from corral.loadtests.client import send_and_measure
from corral.loadtests.config import LoadConfig, StagePlan, stages
from corral.loadtests.metrics import RequestRecord
from corral.loadtests.slo import evaluate, parse_slo


@dataclass
class StageResult:
    plan: StagePlan
    records: list[RequestRecord]
    wall_s: float
    cut_off: int = 0
    """Requests still running when the stage's hard time limit hit (recorded as errors)."""
    started_unix: float | None = None
    """Wall-clock time (Unix seconds) of the stage's t=0, to line its records up with other timelines."""


@dataclass
class RunResult:
    config: LoadConfig
    calibration: TokenCalibration
    stages: list[StageResult] = field(default_factory=list)
    stopped: str = ""
    """Why a sweep ended early ('' when it ran all stages)."""


class _Stage:
    """Work shared by the users of one stage; lives on the locust Environment while it runs."""

    def __init__(self, plan: StagePlan, config: LoadConfig, calibration: TokenCalibration, first_id: int):
        self.plan, self.config, self.calibration = plan, config, calibration
        self.records: list[RequestRecord] = []
        self.started = gevent.event.Event()
        self.t0 = 0.0
        self.t0_unix: float | None = None
        self.next_index = 0
        self.next_id = first_id
        self.in_flight = 0
        """Requests taken by a user: scheduled ones waiting for their send time, and those sent."""
        self.sent = 0
        """Requests actually sent so far."""

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.t0_unix = time.time()
        self.started.set()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def take(self) -> tuple[int, Arrival, float | None] | None:
        """The next request to send: (id, arrival, scheduled time or None), or None when done."""
        c, p = self.config, self.plan
        if p.schedule is not None:
            if self.next_index >= len(p.schedule):
                return None
            arrival = p.schedule[self.next_index]
            scheduled: float | None = arrival.at_s
        else:
            if self.elapsed() >= p.warmup_s + p.duration_s:
                return None
            if c.max_requests is not None and self.next_index >= c.max_requests:
                return None
            arrival, scheduled = Arrival(self.elapsed(), c.input_tokens, c.output_tokens), None
        self.next_index += 1
        self.next_id += 1
        self.in_flight += 1  # from taking it, so a stage is not done while a send is pending
        return self.next_id - 1, arrival, scheduled

    @property
    def done(self) -> bool:
        exhausted = (self.next_index >= len(self.plan.schedule) if self.plan.schedule is not None
                     else self.elapsed() >= self.plan.warmup_s + self.plan.duration_s
                     or (self.config.max_requests is not None and self.next_index >= self.config.max_requests))
        return exhausted and self.in_flight == 0


class LoadUser(User):
    """A locust user sending OpenAI streaming requests for the current stage."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # never route 127.0.0.1 load through a proxy

    def on_stop(self) -> None:
        self.session.close()

    @task
    def one_request(self) -> None:
        stage: _Stage = self.environment.corral_stage
        stage.started.wait()
        job = stage.take()
        if job is None:
            raise StopUser()
        rid, arrival, scheduled = job
        try:
            self._send(stage, rid, arrival, scheduled)
        finally:
            stage.in_flight -= 1

    def _send(self, stage: _Stage, rid: int, arrival: Arrival, scheduled: float | None) -> None:
        if scheduled is not None:
            gevent.sleep(max(0.0, scheduled - stage.elapsed()))
        c = stage.config
        sent = stage.elapsed()
        stage.sent += 1
        warm = (scheduled if scheduled is not None else sent) < stage.plan.warmup_s
        record = RequestRecord(
            request_id=rid, stage=stage.plan.name, phase="warmup" if warm else "measure",
            scheduled_s=scheduled, sent_s=sent, lag_s=None if scheduled is None else sent - scheduled,
            target_input_tokens=arrival.input_tokens, target_output_tokens=arrival.output_tokens,
        )
        prompt = synthesize_prompt(stage.calibration.words_for(arrival.input_tokens), salt=c.seed * 1_000_003 + rid)
        body = request_body(c.model, prompt, arrival.output_tokens, chat=c.chat, force_output=c.force_output)
        try:
            send_and_measure(self.session, c.base_url, body, record, timeout_s=c.request_timeout_s)
        finally:
            stage.records.append(record)
        self.environment.events.request.fire(
            request_type="POST", name=endpoint_path(c.chat), response_time=(record.e2e_s or 0) * 1000,
            response_length=record.output_tokens or 0, response=None, context={"arm": record.arm},
            exception=RuntimeError(record.error) if record.error else None,
        )


def calibrate(config: LoadConfig, log=print) -> TokenCalibration:
    """Map prompt words to the server's prompt tokens with two probes (usage.prompt_tokens)."""
    if not config.calibrate_tokens:
        return TokenCalibration()
    samples = []
    session = requests.Session()
    session.trust_env = False
    for words in (16, 128):
        rec = send_and_measure(session, config.base_url,
                               request_body(config.model, synthesize_prompt(words, salt=words), 2,
                                            chat=config.chat, force_output=config.force_output),
                               RequestRecord(-1), timeout_s=config.request_timeout_s)
        if rec.error or rec.input_tokens is None:
            raise RuntimeError(f"calibration probe to {config.base_url} failed: {rec.error}")
        samples.append((words, rec.input_tokens))
    cal = TokenCalibration.fit(samples)
    log(f"token calibration: prompt_tokens = {cal.overhead:.1f} + {cal.tokens_per_word:.3f} x words")
    return cal


def _progress(stage: _Stage, interval_s: float, out) -> None:
    last_done, last_t = 0, 0.0
    while True:
        gevent.sleep(interval_s)
        recs = stage.records
        t = stage.elapsed()
        ttfts = [r.ttft_s for r in recs[-200:] if r.ttft_s is not None]
        lags = [r.lag_s for r in recs[-200:] if r.lag_s is not None]
        rate = (len(recs) - last_done) / max(1e-9, t - last_t)
        last_done, last_t = len(recs), t
        lag = percentile(lags, 99)
        ttft = percentile(ttfts, 50)
        print(f"[{stage.plan.name}] t={t:6.1f}s sent={stage.sent} done={len(recs)} "
              f"in-flight={stage.sent - len(recs)} errors={sum(1 for r in recs if not r.ok)} "
              f"rate={rate:5.2f}/s ttft_p50={'-' if ttft is None else f'{ttft:.3f}s'} "
              f"lag_p99={'-' if lag is None else f'{lag:.3f}s'}", file=out, flush=True)


def run_stage(env: Environment, plan: StagePlan, config: LoadConfig, calibration: TokenCalibration,
              first_id: int, out=sys.stderr) -> StageResult:
    stage = _Stage(plan, config, calibration, first_id)
    env.corral_stage = stage
    users = plan.concurrency if plan.concurrency is not None else min(config.max_in_flight, max(1, len(plan.schedule)))
    env.runner.start(users, spawn_rate=users)
    spawn_deadline = time.monotonic() + 30
    while env.runner.user_count < users and time.monotonic() < spawn_deadline:
        gevent.sleep(0.05)
    stage.start()
    progress = gevent.spawn(_progress, stage, config.progress_interval_s, out) if config.progress_interval_s else None
    last_send = plan.schedule[-1].at_s if plan.schedule else plan.warmup_s + plan.duration_s
    hard_limit = last_send + config.request_timeout_s + 5
    while not stage.done and stage.elapsed() < hard_limit:
        gevent.sleep(0.05)
    cut_off = stage.in_flight
    env.runner.stop()  # kills users still in flight (only past the hard limit)
    if progress is not None:
        progress.kill()
    records = sorted(stage.records, key=lambda r: r.request_id)
    done_ids = {r.request_id for r in records}
    for rid in range(first_id, stage.next_id):
        if rid not in done_ids:
            records.append(RequestRecord(request_id=rid, stage=plan.name, error="cut off at the stage's time limit"))
    return StageResult(plan, records, stage.elapsed(), cut_off, started_unix=stage.t0_unix)


def run(config: LoadConfig, out=sys.stderr) -> RunResult:
    """Run every stage of config (a sweep stops after `sweep_failures` failing stages)."""
    config.validate()
    logging.getLogger("locust").setLevel(logging.ERROR)
    log = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    plans = stages(config)
    calibration = calibrate(config, log)
    env = Environment(user_classes=[LoadUser], host=config.base_url, events=Events())
    env.create_local_runner()
    result = RunResult(config, calibration)
    clauses = parse_slo(config.slo) if config.slo else []
    failures, next_id = 0, 0
    try:
        for plan in plans:
            log(f"stage {plan.name}: warm-up {plan.warmup_s:g}s, measure {plan.duration_s:g}s"
                + (f", {len(plan.schedule)} scheduled requests" if plan.schedule is not None else ""))
            sr = run_stage(env, plan, config, calibration, next_id, out)
            next_id += len(sr.records)
            result.stages.append(sr)
            if config.mode == "sweep":
                measured = [r for r in sr.records if r.phase == "measure"]
                verdict = evaluate(clauses, measured)
                log(f"stage {plan.name}: SLO {'met' if verdict['met'] else 'MISSED'} "
                    + ", ".join(f"{k} {v['attainment']:.3f}" for k, v in verdict["clauses"].items()
                                if v["attainment"] is not None))
                failures = 0 if verdict["met"] else failures + 1
                if failures >= config.sweep_failures:
                    result.stopped = f"SLO missed at {plan.name} ({failures} consecutive stage(s))"
                    break
    finally:
        env.runner.quit()
    return result
