"""Capacity planning from load-test measurements: pure functions, no I/O.

From the stages of a load test (a rate sweep, ideally) against an arm deployed with R replicas
and `max_num_seqs` M, the planner

1. finds the measured λ*: the highest realised rate (a stage's requests sent in its measured
   window / the window) meeting the SLO, per replica (λ*_r = λ*/R), where the stages'
   attainment, fitted non-increasing in rate (isotonic regression: one noisy stage does not
   decide), crosses the target;
2. fits the engine model (`corral.common.engine_model`, the one the autoscaler simulator and
   the mock server use): a step time from the batch's composition, fitted from per-iteration
   records (the engine's own when the load test recorded them, else reconstructed from client
   token timings), and a per-request host overhead; the residual check replays every measured
   stage's own arrivals through it and compares attainment, TTFT and TPOT with the measurement;
3. predicts λ* at another replica count, max_num_seqs or length mix by replaying the measured
   arrival schedules through the model under that configuration, judged by the same SLO code
   and isotonic fit as the measurement, anchored to the measured λ* (`Planner`); refuses to
   extrapolate beyond `EXTRAPOLATION_FACTOR` of the measurement; sizes a target rate: replicas,
   GPUs, $/hour, $ per 1M output tokens, max_num_seqs and autoscaler settings, as a fleet-spec
   overlay.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.common.engine_model import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    Arrival,
    ClientRequest,
    EngineModel,
    IterationRecord,
    SchedulerLimits,
    StepFit,
    Timing,
    fit_step_model,
    iterations_from_client,
    replay,
    rescale,
)
from corral.common.stats import percentile
from corral.loadtests.metrics import RequestRecord, realised_rate
from corral.loadtests.slo import SloClause, evaluate


@dataclass
class StagePoint:
    """One measured stage, reduced to what the model needs (per replica of the measured arm)."""

    name: str
    rate_rps: float
    """Realised rate to the arm: the stage's measured requests / its measured window."""
    rate_per_replica_rps: float
    attainment_ratio: float
    """min over SLO clauses of attainment / target; >= 1 means the SLO was met."""
    met: bool
    ttft_median_s: float
    itl_mean_s: float
    itl_tail_ratio: float
    """ITL quantile (the SLO's, else p95) / mean."""
    tpot_mean_s: float
    tpot_tail_ratio: float
    decode_batch: float
    """Mean sequences decoding together per replica (Little's law)."""
    in_flight: float
    """Mean requests in flight per replica."""
    output_tokens_mean: float
    input_tokens_mean: float
    service_cv2: float = 1.0
    """Squared coefficient of variation of the requests' time in decode (variance / mean²)."""
    missed_metrics: tuple[str, ...] = ()
    """Metrics (ttft, itl, tpot, e2e) whose SLO clause this stage missed."""
    requests: int = 0
    """Measured requests in the stage (the weight of its attainment in `monotone_attainment`)."""
    offered_rate_rps: float | None = None
    """The stage's nominal rate (None for closed loop), for reports only."""


def stage_points(stages: list[tuple[str, float | None, float, list[RequestRecord]]], clauses: list[SloClause],
                 replicas: int) -> list[StagePoint]:
    """From (name, offered rate or None, duration_s, records) per stage, measured requests only.

    A point's rate is the stage's **realised** rate, `metrics.realised_rate`: the requests sent in
    its measured window / the window (`duration_s`), not the nominal offered rate, which a
    stage's arrival process only approximates. The records are those of the arm being planned,
    so on a split route the count is that arm's share as it was routed. Points come back in
    rising realised-rate order (the order `monotone_attainment` needs)."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas} must be >= 1")
    q = {c.metric: c.quantile_pct for c in clauses}
    points = []
    for name, rate, duration_s, records in stages:
        measured = [r for r in records if r.phase == "measure"]
        ok = [r for r in measured if r.ok and r.ttft_s is not None and r.itl_s]
        if len(ok) < 3 or not duration_s > 0:
            continue
        offered, rate = rate, realised_rate(measured, duration_s)
        itls = [x for r in ok for x in r.itl_s]
        tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
        itl_mean = sum(itls) / len(itls)
        tpot_mean = sum(tpots) / len(tpots) if tpots else itl_mean
        verdict = evaluate(clauses, measured)
        decode_times = [r.e2e_s - r.ttft_s for r in ok]
        decode_time = sum(decode_times) / len(ok)
        cv2 = (sum((d - decode_time) ** 2 for d in decode_times) / len(ok)) / decode_time ** 2 if decode_time > 0 else 1.0
        e2e = sum(r.e2e_s for r in ok) / len(ok)
        points.append(StagePoint(
            name=name, rate_rps=rate, rate_per_replica_rps=rate / replicas,
            attainment_ratio=verdict["attainment_ratio"] or 0.0, met=verdict["met"],
            ttft_median_s=percentile([r.ttft_s for r in ok], 50),
            itl_mean_s=itl_mean, itl_tail_ratio=percentile(itls, q.get("itl", 95)) / itl_mean,
            tpot_mean_s=tpot_mean,
            tpot_tail_ratio=(percentile(tpots, q.get("tpot", 95)) / tpot_mean) if tpots else 1.0,
            decode_batch=rate / replicas * decode_time, in_flight=rate / replicas * e2e,
            output_tokens_mean=sum(r.output_tokens or 0 for r in ok) / len(ok),
            input_tokens_mean=sum(r.input_tokens or 0 for r in ok) / len(ok),
            service_cv2=cv2,
            missed_metrics=tuple(c.metric for c in clauses if not verdict["clauses"][c.key]["met"]),
            requests=len(measured), offered_rate_rps=offered,
        ))
    return sorted(points, key=lambda p: p.rate_rps)


@dataclass
class MeasuredLambda:
    per_replica_rps: float
    bracketed: bool
    """False when the fitted attainment meets the SLO at every stage: λ* is then only a lower bound."""
    last_met: str | None
    first_missed: str | None
    missed_metrics: tuple[str, ...] = ()
    """Metrics whose clause failed just above the crossing (what limits λ*)."""


def monotone_attainment(points: list[StagePoint]) -> list[float]:
    """Each stage's attainment ratio (stages in rising rate order), fitted non-increasing in rate
    (weighted isotonic regression, pool-adjacent-violators, weights = measured requests).

    A stage's attainment is a sample: with 100-200 requests and a p95 target, a handful of slow
    requests moves it by a few points, so a single stage can dip below the target and the next pass
    again. The true attainment only falls as the rate rises; pooling neighbours that contradict
    that uses every stage instead of letting the first unlucky one decide λ*.
    """
    rates = [p.rate_rps for p in points]
    if rates != sorted(rates):
        raise ValueError(f"stages must be in rising rate order, got rates {rates}")
    blocks: list[list[float]] = []  # [weighted sum, weight, stages]
    for p in points:
        blocks.append([max(1, p.requests) * p.attainment_ratio, max(1, p.requests), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, weight, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += weight
            blocks[-1][2] += n
    return [total / weight for total, weight, n in blocks for _ in range(int(n))]


def measured_lambda_star(points: list[StagePoint]) -> MeasuredLambda:
    """Highest rate meeting the SLO: where the monotone fit of attainment (`monotone_attainment`)
    crosses the target, interpolated between the last stage fitted to meet it and the next."""
    if not points:
        raise ValueError("no usable stages (each needs at least 3 successful measured requests)")
    points = sorted(points, key=lambda p: p.rate_rps)
    fitted = monotone_attainment(points)
    if fitted[0] < 1.0:
        raise ValueError(f"the SLO is missed already at the lowest measured rate ({points[0].name}, "
                         f"{points[0].rate_rps:g} rps): measure lower rates")
    i = max(k for k, f in enumerate(fitted) if f >= 1.0)
    lo = points[i]
    if i + 1 == len(points):
        return MeasuredLambda(lo.rate_per_replica_rps, False, lo.name, None)
    hi = points[i + 1]
    # The fit falls from >= 1 (lo) to < 1 (hi); find where it crosses 1.
    span = fitted[i] - fitted[i + 1]
    frac = (fitted[i] - 1.0) / span if span > 0 else 0.0
    lam = lo.rate_per_replica_rps + max(0.0, min(1.0, frac)) * (hi.rate_per_replica_rps - lo.rate_per_replica_rps)
    # What limits λ*: the clauses missed in the first pooled group below the target (not further up,
    # where another mechanism may also give out).
    group = [p for k, p in enumerate(points) if k > i and fitted[k] == fitted[i + 1]]
    missed = tuple(sorted({m for p in group for m in p.missed_metrics}))
    return MeasuredLambda(lam, True, lo.name, hi.name, missed)


@dataclass
class Measured:
    """What was measured: the arm's deployment during the load test."""

    arm: str
    replicas: int
    max_num_seqs: int
    devices_per_replica: int = 1
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    max_ongoing_requests: int | None = None
    """Serve's per-replica cap (None: not recorded; the replay then sends every request to an engine)."""


EXTRAPOLATION_FACTOR = 2.0
"""The planner refuses a configuration beyond this factor of what was measured (max_num_seqs
above it times the measured one; mean prompt or output length above it times the longest measured
mean): the fitted step model has seen no batch or prompt of that size, and its linear terms are
the part most likely to bend there (attention cost grows with context, a CPU's caches run out)."""


class ExtrapolationError(ValueError):
    """A prediction was asked beyond `EXTRAPOLATION_FACTOR` of the measurement; `field` names the input."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class Prediction:
    replicas: int
    max_num_seqs: int
    lambda_star_rps: float
    lambda_star_per_replica_rps: float
    warnings: list[str] = field(default_factory=list)
    model_lambda_star_rps: float | None = None
    """The replay's own λ* for this configuration, before anchoring to the measurement."""


@dataclass
class StageReplay:
    """One measured stage replayed through the fitted model (the residual check)."""

    name: str
    rate_rps: float
    measured_attainment: dict[str, float | None]
    model_attainment: dict[str, float | None]
    measured_ttft_p50_s: float | None
    model_ttft_p50_s: float | None
    measured_tpot_mean_s: float | None
    model_tpot_mean_s: float | None


@dataclass
class _Stage:
    """A measured stage as the replay needs it: every request's arrival (warm-up included, so the
    engine is as busy at the window's start as it was), which ones were measured, the records."""

    name: str
    rate_rps: float
    duration_s: float
    arrivals: list[Arrival]
    measured: list[bool]
    records: list[RequestRecord]


def _arrivals(stages: list[tuple[str, float | None, float, list[RequestRecord]]]) -> list[_Stage]:
    out = []
    for name, _, duration_s, records in stages:
        measured = [r for r in records if r.phase == "measure"]
        if not measured or not duration_s > 0:
            continue
        recs = sorted(records, key=lambda r: r.sent_s)
        arrivals = [Arrival(r.sent_s, int(r.input_tokens or r.target_input_tokens or 1),
                            int(r.output_tokens or r.target_output_tokens or 1)) for r in recs]
        out.append(_Stage(name, len(measured) / duration_s, duration_s, arrivals,
                          [r.phase == "measure" for r in recs], recs))
    return sorted(out, key=lambda s: s.rate_rps)


def _records(timings: list[Timing], measured: list[bool], name: str) -> list[RequestRecord]:
    """Replayed timings as the load test's records, so the same SLO code judges them."""
    return [RequestRecord(i, stage=name, phase="measure" if m else "warmup", sent_s=t.arrival_s, ttft_s=t.ttft_s,
                          e2e_s=t.e2e_s, itl_s=list(t.itl_s), tpot_s=t.tpot_s, input_tokens=t.prompt_tokens,
                          output_tokens=t.output_tokens)
            for i, (t, m) in enumerate(zip(timings, measured))]


def _client_requests(stages: list[_Stage]) -> list[list[ClientRequest]]:
    return [[ClientRequest(r.sent_s, r.ttft_s, tuple(r.itl_s), int(r.input_tokens or 1), int(r.output_tokens or 1))
             for r in s.records if r.ok and r.ttft_s is not None and r.itl_s] for s in stages]


READERS_PER_STAGE = 60
"""Requests per stage whose token gaps become reconstructed iterations (each of ~output-tokens
gaps): a few thousand records per sweep, enough for four coefficients, at a bounded cost."""


def fit_engine_model(stages: list[_Stage], limits: SchedulerLimits,
                     iterations: list[IterationRecord] | None = None) -> tuple[EngineModel, StepFit, str]:
    """The step model from the engine's own per-iteration records when given, else from
    iterations reconstructed from the client timings (`iterations_from_client`, per stage);
    then the host overhead: the median over the lightest stage's measured requests of client
    TTFT minus the replay's TTFT (the replay's engine queue + prefill, no overhead)."""
    if iterations:
        source = f"{len(iterations)} engine iteration records"
        fit = fit_step_model(iterations)
    else:
        recs = [it for reqs in _client_requests(stages) for it in iterations_from_client(reqs, READERS_PER_STAGE)]
        source = f"{len(recs)} iterations reconstructed from client token timings (no engine records)"
        fit = fit_step_model(recs)
    lightest = stages[0]
    timings = replay(lightest.arrivals, EngineModel(fit.model), limits)
    gaps = [r.ttft_s - t.ttft_s for r, t, m in zip(lightest.records, timings, lightest.measured)
            if m and r.ok and r.ttft_s is not None]
    overhead = max(0.0, percentile(gaps, 50) or 0.0) if gaps else 0.0
    return EngineModel(fit.model, overhead), fit, source


@dataclass
class Planner:
    """A fitted planner: the measured λ*, the engine model and the measured stages' arrivals.

    Prediction by replay: the measured stages' arrival schedules, compressed or stretched in
    time to a ladder of rates (lengths scaled for another mix), run through the engine model
    under the other configuration; the replayed requests are judged by the same SLO code
    (`slo.evaluate`) and the same isotonic λ* (`measured_lambda_star`) as the measurement.
    The measurement anchors it: predicted λ* = measured λ* x model λ*(other) / model λ*(measured),
    so a bias the model has at both configurations cancels; the unanchored replay λ* is reported too."""

    measured: Measured
    clauses: list[SloClause]
    points: list[StagePoint]
    lam: MeasuredLambda
    engine: EngineModel
    step_fit: StepFit
    fit_source: str
    stages: list[_Stage]
    model_lambda_at_measured: float
    """The replay's λ* per replica at the measured configuration."""
    input_tokens: float
    output_tokens: float
    residuals: list[StageReplay] = field(default_factory=list)

    @classmethod
    def fit(cls, measured: Measured, clauses: list[SloClause],
            stages: list[tuple[str, float | None, float, list[RequestRecord]]],
            iterations: list[IterationRecord] | None = None) -> Planner:
        """Fit from the raw stages: (name, nominal rate or None, measured window s, records)."""
        if not clauses:
            raise ValueError("an SLO is required to plan capacity")
        points = stage_points(stages, clauses, measured.replicas)
        lam = measured_lambda_star(points)
        replayable = _arrivals(stages)
        limits = cls._limits(measured, measured.replicas, measured.max_num_seqs)
        engine, step_fit, source = fit_engine_model(replayable, limits, iterations)
        ok = [r for s in replayable for r, m in zip(s.records, s.measured) if m and r.ok]
        planner = cls(measured, clauses, points, lam, engine, step_fit, source, replayable, math.nan,
                      input_tokens=sum(r.input_tokens or 0 for r in ok) / max(1, len(ok)),
                      output_tokens=sum(r.output_tokens or 0 for r in ok) / max(1, len(ok)))
        planner.residuals = [planner._residual(s, limits) for s in replayable]
        planner.model_lambda_at_measured = planner.model_lambda_star(measured.replicas, measured.max_num_seqs)
        return planner

    @staticmethod
    def _limits(measured: Measured, replicas: int, max_num_seqs: int) -> SchedulerLimits:
        mor = measured.max_ongoing_requests
        if mor is not None:  # the cap keeps its ratio to the batch (corral sets it from max_num_seqs)
            mor = max(1, round(mor * max_num_seqs / measured.max_num_seqs))
        return SchedulerLimits(max_num_seqs, measured.max_num_batched_tokens, replicas, mor)

    def _residual(self, stage: _Stage, limits: SchedulerLimits) -> StageReplay:
        model = _records(replay(stage.arrivals, self.engine, limits), stage.measured, stage.name)
        real = [r for r, m in zip(stage.records, stage.measured) if m]
        sim = [r for r in model if r.phase == "measure"]

        def att(recs: list[RequestRecord]) -> dict[str, float | None]:
            return {c.key: c.attainment(recs) for c in self.clauses}

        def p50(recs: list[RequestRecord]) -> float | None:
            return percentile([r.ttft_s for r in recs if r.ok and r.ttft_s is not None], 50)

        def tpot(recs: list[RequestRecord]) -> float | None:
            xs = [r.tpot_s for r in recs if r.ok and r.tpot_s is not None]
            return sum(xs) / len(xs) if xs else None

        return StageReplay(stage.name, stage.rate_rps, att(real), att(sim), p50(real), p50(sim), tpot(real), tpot(sim))

    def model_lambda_star(self, replicas: int, max_num_seqs: int, prompt_factor: float = 1.0,
                          output_factor: float = 1.0) -> float:
        """The replay's λ* per replica: a ladder of rates from the measured stages' schedules
        (their realised per-replica rates, then upward in the sweep's median step until two
        rates in a row miss), judged by the SLO and fitted isotonic like a measured sweep."""
        limits = self._limits(self.measured, replicas, max_num_seqs)
        per_rates = [s.rate_rps / self.measured.replicas for s in self.stages]
        steps = [b - a for a, b in zip(per_rates, per_rates[1:]) if b > a]
        step = percentile(steps, 50) if steps else per_rates[0] / 4
        step = max(step or 0.0, per_rates[-1] * 0.02)
        points: list[StagePoint] = []

        def run(per: float) -> StagePoint | None:
            stage = min(self.stages, key=lambda s: abs(s.rate_rps / self.measured.replicas - per))
            factor = stage.rate_rps / (per * replicas)
            arrivals = rescale(stage.arrivals, factor, prompt_factor, output_factor)
            recs = _records(replay(arrivals, self.engine, limits), stage.measured, f"rate={per:.4g}")
            pts = stage_points([(f"rate={per:.4g}", None, stage.duration_s * factor, recs)], self.clauses, replicas)
            return pts[0] if pts else None

        rates = list(per_rates)
        while rates[0] > 1e-3:
            p = run(rates[0])
            if p is None or p.met:
                if p is not None:
                    points.append(p)
                break
            rates[0] /= 2  # the lowest measured rate already misses here: look lower
            points = []
        for per in rates[1:]:
            p = run(per)
            if p is not None:
                points.append(p)
        misses, per = 0, rates[-1]
        for _ in range(200):
            if misses >= 2:
                break
            per += step
            p = run(per)
            if p is None:
                break
            points.append(p)
            misses = 0 if p.met else misses + 1
        points.sort(key=lambda q: q.rate_rps)
        try:
            return measured_lambda_star(points).per_replica_rps
        except ValueError:
            return 0.0

    def check_extrapolation(self, max_num_seqs: int, prompt_tokens: float | None = None,
                            output_tokens: float | None = None) -> None:
        """Raise `ExtrapolationError` beyond `EXTRAPOLATION_FACTOR` of the measurement."""
        m, f = self.measured, EXTRAPOLATION_FACTOR
        if max_num_seqs > f * m.max_num_seqs:
            raise ExtrapolationError("max_num_seqs", f"max_num_seqs={max_num_seqs} is more than {f:g}x the measured "
                                     f"{m.max_num_seqs}: the step model has seen no batch that large; measure it")
        measured_in = [r.input_tokens or 0 for s in self.stages for r in s.records if r.ok]
        measured_out = [r.output_tokens or 0 for s in self.stages for r in s.records if r.ok]
        for name, value, seen in (("prompt_tokens", prompt_tokens, measured_in), ("output_tokens", output_tokens, measured_out)):
            top = max(seen, default=0)
            if value is not None and value > f * top:
                raise ExtrapolationError(name, f"{name}={value:g} is more than {f:g}x the longest measured ({top}): "
                                         "the step model has seen no prompt or context that long; measure it")

    def predict(self, replicas: int | None = None, max_num_seqs: int | None = None,
                prompt_tokens: float | None = None, output_tokens: float | None = None) -> Prediction:
        """λ* at another configuration (replicas, max_num_seqs, mean prompt/output length), by replay
        (class docstring). Raises `ExtrapolationError` beyond `EXTRAPOLATION_FACTOR`."""
        m = self.measured
        r = replicas or m.replicas
        seqs = max_num_seqs or m.max_num_seqs
        if r < 1 or seqs < 1:
            raise ValueError(f"replicas ({r}) and max_num_seqs ({seqs}) must be >= 1")
        self.check_extrapolation(seqs, prompt_tokens, output_tokens)
        warnings = []
        if not self.lam.bracketed:
            warnings.append(f"every measured stage met the SLO (up to {self.points[-1].rate_rps:g} rps): "
                            "λ* is a lower bound; sweep to higher rates")
        pf = prompt_tokens / self.input_tokens if prompt_tokens and self.input_tokens > 0 else 1.0
        of = output_tokens / self.output_tokens if output_tokens and self.output_tokens > 0 else 1.0
        same = (r, seqs, pf, of) == (m.replicas, m.max_num_seqs, 1.0, 1.0)
        model_here = self.model_lambda_at_measured if same else self.model_lambda_star(r, seqs, pf, of)
        if same:
            per = self.lam.per_replica_rps
        elif self.model_lambda_at_measured > 0:
            per = self.lam.per_replica_rps * model_here / self.model_lambda_at_measured
            if seqs > m.max_num_seqs or pf > 1 or of > 1:
                warnings.append(f"max_num_seqs={seqs}, lengths x{pf:.2g}/x{of:.2g}: beyond the measured configuration "
                                "(predicted by replay, not measured)")
        else:
            per = 0.0
            warnings.append("the model does not meet the SLO at any rate at the measured configuration: "
                            "no prediction; see the residual check")
        if r != m.replicas:
            warnings.append(f"{r} replicas: predicted by replay through Serve's router (measured with {m.replicas})")
        return Prediction(r, seqs, per * r, per, warnings, model_here * r)

    def mean_in_flight(self, per_replica_rps: float, max_num_seqs: int) -> float:
        """Mean requests in flight per replica at a rate (Little's law on the replay's e2e)."""
        stage = min(self.stages, key=lambda s: abs(s.rate_rps / self.measured.replicas - per_replica_rps))
        factor = stage.rate_rps / self.measured.replicas / per_replica_rps
        timings = replay(rescale(stage.arrivals, factor), self.engine, self._limits(self.measured, 1, max_num_seqs))
        e2e = [t.e2e_s for t in timings]
        return per_replica_rps * sum(e2e) / len(e2e) if e2e else 1.0

    def describe(self) -> dict[str, Any]:
        """The fitted model and its residual check, for reports."""
        return {"engine_model": self.engine.as_dict(), "fitted_from": self.fit_source,
                "step_fit": {"records": self.step_fit.records, "rms_residual_s": self.step_fit.rms_residual_s,
                             "mean_step_s": self.step_fit.mean_step_s,
                             "decode_seqs_max": self.step_fit.decode_seqs_max,
                             "prefill_tokens_max": self.step_fit.prefill_tokens_max},
                "model_lambda_star_per_replica_rps": self.model_lambda_at_measured,
                "measured_lambda_star_per_replica_rps": self.lam.per_replica_rps,
                "input_tokens_mean": self.input_tokens, "output_tokens_mean": self.output_tokens,
                "residuals": [asdict(r) for r in self.residuals]}

    def latency_curve(self, max_batch: int, name: str = "measured", source: str = "") -> dict[str, Any]:
        """The fitted model as a curve file for the autoscaler simulator's `--curve`: the engine
        model's coefficients (`engine_model`, what the simulator uses) and, for reading, the
        decode step time at each batch with the measured mean context."""
        batches = sorted({1, 2, *(2 ** k for k in range(2, 12) if 2 ** k < max_batch), max(2, max_batch)})
        ctx = self.input_tokens + self.output_tokens / 2
        step = self.engine.step
        return {
            "name": name,
            "source": source or "fitted by corral plan capacity from a load-test sweep (corral.common.engine_model)",
            "engine_model": self.engine.as_dict(),
            "context_tokens": round(ctx, 3),
            "batch": batches,
            "itl_s": [round(step.step_s(b, 0, round(b * ctx)), 6) for b in batches],
            "prefill_s_per_token": round(step.per_prefill_token_s + step.per_kv_token_s, 9),
            "prefill_base_s": round(step.base_s, 6),
            "measured_batch_range": [1, self.step_fit.decode_seqs_max],
        }


@dataclass
class CapacityPlan:
    arm: str
    slo: str
    target_rps: float
    utilization: float
    replicas: int
    gpus: int
    gpu_hourly_usd: float | None
    usd_per_hour: float | None
    usd_per_million_output_tokens: float | None
    max_num_seqs: int
    target_ongoing_requests: float
    min_replicas: int
    lambda_star_per_replica_rps: float
    measured_lambda_star_per_replica_rps: float
    measured: dict[str, Any]
    model: dict[str, Any]
    warnings: list[str]

    def overlay(self) -> dict[str, Any]:
        """The fleet-spec overlay: per-arm fields, merged by arm name onto a fleet spec. The
        autoscaling section carries the fitted engine model's step coefficients, which the
        autoscaler's model-based knobs (`slo_packing_itl_share`, `model_sizing_utilisation`) read."""
        step = (self.model.get("engine_model") or {}) if self.model else {}
        engine = {f"engine_{k}": float(step[k]) for k in ("base_s", "per_decode_seq_s", "per_prefill_token_s")
                  if k in step}
        return {"arms": [{
            "name": self.arm,
            "engine": {"max_num_seqs": self.max_num_seqs},
            "replicas": {"min": self.min_replicas, "max": self.replicas, "initial": self.replicas},
            "autoscaling": {"target_ongoing_requests": self.target_ongoing_requests, **engine},
        }]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_capacity(planner: Planner, target_rps: float, gpu_hourly_usd: float | None = None,
                  utilization: float = 0.85, max_num_seqs: int | None = None, min_rps: float = 0.0,
                  slo_text: str = "") -> CapacityPlan:
    """Size the arm for target_rps, running each replica at `utilization` of its λ*. Without
    `max_num_seqs`, the one (of powers of two and the measured one, up to `EXTRAPOLATION_FACTOR`
    times it) with the highest predicted λ* per replica, the smallest among equals."""
    if target_rps <= 0:
        raise ValueError(f"target_rps={target_rps} must be > 0")
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization={utilization} must be in (0, 1]")
    if gpu_hourly_usd is not None and gpu_hourly_usd < 0:
        raise ValueError(f"gpu_hourly_usd={gpu_hourly_usd} must be >= 0")
    m = planner.measured
    warnings: list[str] = []
    if max_num_seqs is None:
        top = int(EXTRAPOLATION_FACTOR * m.max_num_seqs)
        candidates = sorted({m.max_num_seqs, *(2 ** k for k in range(11) if 2 ** k <= top)})
        preds = {c: planner.predict(replicas=1, max_num_seqs=c) for c in candidates}
        best = max(p.lambda_star_per_replica_rps for p in preds.values())
        max_num_seqs = min(c for c, p in preds.items() if p.lambda_star_per_replica_rps >= best * (1 - 1e-9))
        pred = preds[max_num_seqs]
    else:
        pred = planner.predict(replicas=1, max_num_seqs=max_num_seqs)
    warnings += [w for w in pred.warnings if "replicas" not in w]
    per = pred.lambda_star_per_replica_rps
    if per <= 0:
        raise ValueError(f"predicted λ* per replica is {per:g} rps at max_num_seqs={max_num_seqs}: "
                         "the SLO cannot be met with this configuration")
    replicas = max(1, math.ceil(target_rps / (per * utilization) - 1e-9))
    if replicas > m.replicas:
        warnings.append(f"{replicas} replicas: assumes λ* scales linearly with replicas (measured with {m.replicas})")
    top_rate = planner.points[-1].rate_rps
    if target_rps / replicas > top_rate / m.replicas:
        warnings.append(f"per-replica operating rate {target_rps / replicas:.3g} rps is above the highest measured "
                        f"{top_rate / m.replicas:.3g} rps")
    op_rate = target_rps / replicas
    in_flight = planner.mean_in_flight(op_rate, max_num_seqs)
    target_ongoing = round(max(1.0, min(in_flight, max_num_seqs)), 1)
    gpus = replicas * m.devices_per_replica
    usd_h = None if gpu_hourly_usd is None else gpus * gpu_hourly_usd
    out_per_h = target_rps * planner.output_tokens * 3600
    usd_m = None if usd_h is None or out_per_h <= 0 else usd_h / out_per_h * 1e6
    min_replicas = max(1, math.ceil(min_rps / (per * utilization) - 1e-9)) if min_rps > 0 else 1
    return CapacityPlan(
        arm=m.arm, slo=slo_text, target_rps=target_rps, utilization=utilization, replicas=replicas, gpus=gpus,
        gpu_hourly_usd=gpu_hourly_usd, usd_per_hour=usd_h, usd_per_million_output_tokens=usd_m,
        max_num_seqs=max_num_seqs, target_ongoing_requests=target_ongoing, min_replicas=min(min_replicas, replicas),
        lambda_star_per_replica_rps=per, measured_lambda_star_per_replica_rps=planner.lam.per_replica_rps,
        measured=asdict(m), model=planner.describe(), warnings=warnings,
    )
