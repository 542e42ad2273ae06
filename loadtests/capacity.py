"""Capacity planning from load-test measurements: pure functions, no I/O.

From the stages of a load test (a rate sweep, ideally) against an arm deployed with R replicas
and `max_num_seqs` M, the planner

1. finds the measured λ*: the highest realised rate (a stage's requests sent in its measured
   window / the window) meeting the SLO, per replica (λ*_r = λ*/R),
   where the stages' attainment, fitted non-increasing in rate (isotonic regression: one noisy
   stage does not decide), crosses the target;
2. fits a per-replica model of a continuous-batching engine:
   * iteration time vs running batch, `t_iter(B) = a + b·B`, from the stages' mean ITL and mean
     decode batch (Little's law: B = per-replica rate × mean time in decode);
   * service time of a request at batch B: `S(B) = ttft0 + (out - 1)·t_iter(B)`;
   * the ITL (or TPOT) bound: the batch whose iteration time times the measured tail factor
     (p_q / mean) reaches the SLO threshold, and the rate that produces that batch;
   * the batch cap: with M slots busy the replica is an M-server queue with service time S(M);
     Erlang C gives the probability of waiting, and the Allen-Cunneen approximation for M/G/c
     scales the wait by (1 + cv²)/2, cv² being the measured squared coefficient of variation
     of service times (≈ 0 for forced output lengths, ≈ 1 for exponential ones): the rate at
     which the TTFT (or e2e) percentile reaches its threshold;
   * the model's λ*(M) is the smaller of the two. The measurement anchors it: the bound of the
     clause that failed just above the crossing (ITL/TPOT: the latency bound; TTFT/e2e: the
     queueing bound) is scaled to equal the measured λ*, and only that bound. A factor fitted on
     one mechanism says nothing about the other, which often binds at another max_num_seqs (at a
     large M the ITL limits, at a small M the wait for a slot);
3. predicts λ* at another replica count (linear in replicas) or another max_num_seqs, and sizes
   a target rate: replicas, GPUs, $/hour, $ per 1M output tokens, max_num_seqs and autoscaler
   settings, as a fleet-spec overlay. Extrapolations are reported as warnings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

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


# Which bound of the replica model limits each SLO metric.
LATENCY_METRICS = frozenset({"itl", "tpot"})
"""Bounded by the iteration time at the running batch (`ReplicaModel.lambda_latency_bound`)."""
QUEUE_METRICS = frozenset({"ttft", "e2e"})
"""Bounded by the wait for a free batch slot (`ReplicaModel.lambda_queue_bound`)."""


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
class ReplicaModel:
    """Per-replica performance model fitted from the stage points (see module docstring)."""

    iter_base_s: float
    """a in t_iter(B) = a + b·B."""
    iter_per_seq_s: float
    """b in t_iter(B) = a + b·B."""
    ttft0_s: float
    """TTFT at the lightest measured load (prefill + first iteration + HTTP)."""
    output_tokens: float
    input_tokens: float
    itl_tail_ratio: float
    tpot_tail_ratio: float
    batch_range: tuple[float, float]
    """Smallest and largest mean decode batch measured."""
    service_cv2: float = 1.0
    """Squared coefficient of variation of service time (lightest measured stage): 1 = M/M/c."""

    def t_iter(self, batch: float) -> float:
        return self.iter_base_s + self.iter_per_seq_s * max(1.0, batch)

    def service_s(self, batch: float) -> float:
        return self.ttft0_s + max(0.0, self.output_tokens - 1) * self.t_iter(batch)

    def batch_at(self, rate_per_replica: float) -> float:
        """Mean requests in flight per replica at a rate, from B = λ·S(B) (unbounded batch)."""
        # B = λ(ttft0 + n·(a + b·B))  =>  B = λ(ttft0 + n·a) / (1 - λ·n·b)
        n = max(0.0, self.output_tokens - 1)
        denom = 1 - rate_per_replica * n * self.iter_per_seq_s
        if denom <= 0:
            return math.inf
        return rate_per_replica * (self.ttft0_s + n * self.iter_base_s) / denom

    def max_batch_for_latency(self, clauses: list[SloClause]) -> float:
        """Largest batch whose iteration time keeps the ITL/TPOT clauses (inf if none)."""
        best = math.inf
        for c in clauses:
            tail = {"itl": self.itl_tail_ratio, "tpot": self.tpot_tail_ratio}.get(c.metric)
            if tail is None:
                continue
            allowed_iter = c.threshold_s / tail
            if allowed_iter <= self.iter_base_s + self.iter_per_seq_s:
                return 0.0
            if self.iter_per_seq_s > 0:
                best = min(best, (allowed_iter - self.iter_base_s) / self.iter_per_seq_s)
        return best

    def lambda_latency_bound(self, clauses: list[SloClause]) -> float:
        """Per-replica rate at which the decode batch reaches max_batch_for_latency."""
        b = self.max_batch_for_latency(clauses)
        return math.inf if math.isinf(b) else b / self.service_s(b)

    def lambda_queue_bound(self, max_num_seqs: int, clauses: list[SloClause]) -> float:
        """Per-replica rate at which waiting for one of max_num_seqs slots breaks TTFT/e2e (Erlang C)."""
        c = max_num_seqs
        service = self.service_s(c)
        mu = 1.0 / service
        limits = []
        for cl in clauses:
            if cl.metric == "ttft":
                budget = cl.threshold_s - self.ttft0_s
            elif cl.metric == "e2e":
                budget = cl.threshold_s - service
            else:
                continue
            if budget <= 0:
                return 0.0
            limits.append((budget, 1 - cl.quantile_pct / 100))
        if not limits:
            return 0.9 * c * mu  # no waiting-time clause: stay clear of the unstable region

        # Given that it waits, a request's wait is ~exponential with rate (cμ - λ) in M/M/c;
        # Allen-Cunneen stretches the mean wait by (1 + cv²)/2 for general service times.
        stretch = (1 + self.service_cv2) / 2

        def ok(lam: float) -> bool:
            # Whether a request waits depends on the load at the *mean* batch (slots free up
            # faster while few are busy); how long it waits, on the full batch's service rate.
            batch = min(float(c), self.batch_at(lam))
            pw = erlang_c(c, lam * self.service_s(batch))
            return all(pw * math.exp(-(c * mu - lam) * budget / stretch) <= miss for budget, miss in limits)

        lo, hi = 0.0, c * mu * (1 - 1e-9)
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def latency_curve(self, max_batch: int, name: str = "measured", source: str = "") -> dict[str, Any]:
        """The fitted model as a latency-vs-batch curve file (the format of the autoscaler
        simulator's `--curve`: batch, itl_s, prefill cost): measured curves replace the illustrative
        default. Prefill is the lightest-load TTFT less one iteration, spread over the measured
        prompt length (HTTP and queueing overheads included, so it errs on the slow side)."""
        batches = sorted({1, 2, *(2 ** k for k in range(2, 12) if 2 ** k < max_batch), max(2, max_batch)})
        prefill = max(0.0, self.ttft0_s - self.t_iter(1))
        return {
            "name": name,
            "source": source or "fitted by corral plan capacity from a load-test sweep: t_iter(B) = a + b*B",
            "batch": batches,
            "itl_s": [round(self.t_iter(b), 6) for b in batches],
            "prefill_s_per_token": round(prefill / max(1.0, self.input_tokens), 9),
            "prefill_base_s": 0.0,
            "measured_batch_range": list(self.batch_range),
        }


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (c servers, load a = λ/μ)."""
    c, a = servers, offered_load
    if a >= c:
        return 1.0
    # Iterative Erlang B, then C = B / (1 - ρ(1 - B)); stable for large c.
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho * (1 - b))


def fit_model(points: list[StagePoint], max_num_seqs: int | None = None) -> ReplicaModel:
    """Least-squares t_iter(B) = a + b·B over the stages, B = mean requests in flight per replica
    (as in ReplicaModel.batch_at); b = 0 when batches did not vary. Stages whose mean in-flight
    exceeds max_num_seqs are left out when others remain: their excess is queue, not batch."""
    if not points:
        raise ValueError("no stage points to fit")
    unqueued = [p for p in points if max_num_seqs is None or p.in_flight <= max_num_seqs]
    points_fit = unqueued if len(unqueued) >= 2 else points
    xs = [p.in_flight for p in points_fit]
    ys = [p.tpot_mean_s for p in points_fit]
    n = len(points_fit)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 1e-12 else 0.0
    slope = max(0.0, slope)
    base = max(1e-6, my - slope * mx)
    return ReplicaModel(
        iter_base_s=base, iter_per_seq_s=slope,
        ttft0_s=min(p.ttft_median_s for p in points),
        output_tokens=sum(p.output_tokens_mean for p in points) / len(points),
        input_tokens=sum(p.input_tokens_mean for p in points) / len(points),
        itl_tail_ratio=_median([p.itl_tail_ratio for p in points if p.met] or [p.itl_tail_ratio for p in points]),
        tpot_tail_ratio=_median([p.tpot_tail_ratio for p in points if p.met] or [p.tpot_tail_ratio for p in points]),
        batch_range=(min(xs), max(xs)),
        # The lightest stage: its decode times vary with output lengths, not with queueing.
        service_cv2=min(1.0, points[0].service_cv2),
    )


def _median(xs: list[float]) -> float:
    return percentile(xs, 50)


@dataclass
class Measured:
    """What was measured: the arm's deployment during the load test."""

    arm: str
    replicas: int
    max_num_seqs: int
    devices_per_replica: int = 1


@dataclass
class Prediction:
    replicas: int
    max_num_seqs: int
    lambda_star_rps: float
    lambda_star_per_replica_rps: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class Planner:
    """A fitted planner: measured λ*, the model and one calibration factor per bound."""

    measured: Measured
    clauses: list[SloClause]
    points: list[StagePoint]
    model: ReplicaModel
    lam: MeasuredLambda
    calibration_latency: float = 1.0
    """Measured λ*_r / the model's latency bound, when an ITL/TPOT clause failed just above
    the crossing (or the bound lies below the measured λ*); 1 otherwise."""
    calibration_queue: float = 1.0
    """Measured λ*_r / the model's queueing bound at the measured max_num_seqs, when a TTFT/e2e
    clause failed there (or the bound lies below the measured λ*); 1 otherwise."""

    @classmethod
    def fit(cls, measured: Measured, clauses: list[SloClause], points: list[StagePoint]) -> Planner:
        if not clauses:
            raise ValueError("an SLO is required to plan capacity")
        lam = measured_lambda_star(points)
        model = fit_model(points, measured.max_num_seqs)
        # What broke the SLO at the measured λ*: only that mechanism's bound is anchored to it.
        # Without a failing stage λ* is a lower bound and can only lift a bound that lies below it.
        failed = set(lam.missed_metrics)

        def factor(bound: float, metrics: frozenset[str]) -> float:
            if not 0 < bound < math.inf:
                return 1.0
            if failed & metrics or bound < lam.per_replica_rps:
                return lam.per_replica_rps / bound
            return 1.0

        return cls(measured, clauses, points, model, lam,
                   calibration_latency=factor(model.lambda_latency_bound(clauses), LATENCY_METRICS),
                   calibration_queue=factor(model.lambda_queue_bound(measured.max_num_seqs, clauses), QUEUE_METRICS))

    def model_lambda_star(self, max_num_seqs: int) -> float:
        """The calibrated model's λ* per replica at a max_num_seqs: the smaller calibrated bound."""
        return min(self.calibration_latency * self.model.lambda_latency_bound(self.clauses),
                   self.calibration_queue * self.model.lambda_queue_bound(max_num_seqs, self.clauses))

    def predict(self, replicas: int | None = None, max_num_seqs: int | None = None) -> Prediction:
        m = self.measured
        r = replicas or m.replicas
        seqs = max_num_seqs or m.max_num_seqs
        warnings = []
        if not self.lam.bracketed:
            warnings.append(f"every measured stage met the SLO (up to {self.points[-1].rate_rps:g} rps): "
                            "λ* is a lower bound; sweep to higher rates")
        if seqs == m.max_num_seqs:
            per = self.lam.per_replica_rps
        else:
            model_lam = self.model_lambda_star(seqs)
            per = model_lam if math.isfinite(model_lam) else self.lam.per_replica_rps
            lo, hi = self.model.batch_range
            if seqs > m.max_num_seqs:
                warnings.append(f"max_num_seqs={seqs} is above the measured {m.max_num_seqs}: "
                                "predicted from the fitted model, not measured")
            if not lo <= seqs <= max(hi, m.max_num_seqs):
                warnings.append(f"extrapolating the iteration-time fit to batch {seqs}: measured mean batches "
                                f"{lo:.1f}..{hi:.1f}")
        if r > m.replicas:
            warnings.append(f"{r} replicas: assumes λ* scales linearly with replicas (measured with {m.replicas})")
        return Prediction(r, seqs, per * r, per, warnings)


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
        """The fleet-spec overlay: per-arm fields, merged by arm name onto a fleet spec."""
        return {"arms": [{
            "name": self.arm,
            "engine": {"max_num_seqs": self.max_num_seqs},
            "replicas": {"min": self.min_replicas, "max": self.replicas, "initial": self.replicas},
            "autoscaling": {"target_ongoing_requests": self.target_ongoing_requests},
        }]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_capacity(planner: Planner, target_rps: float, gpu_hourly_usd: float | None = None,
                  utilization: float = 0.85, max_num_seqs: int | None = None, min_rps: float = 0.0,
                  slo_text: str = "") -> CapacityPlan:
    """Size the arm for target_rps, running each replica at `utilization` of its λ*."""
    if target_rps <= 0:
        raise ValueError(f"target_rps={target_rps} must be > 0")
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization={utilization} must be in (0, 1]")
    if gpu_hourly_usd is not None and gpu_hourly_usd < 0:
        raise ValueError(f"gpu_hourly_usd={gpu_hourly_usd} must be >= 0")
    m, model = planner.measured, planner.model
    warnings: list[str] = []
    if max_num_seqs is None:
        # The largest batch that keeps ITL/TPOT within the SLO: beyond it requests should queue
        # (TTFT) rather than slow every running sequence. Never below the batch the plan needs.
        cap = model.max_batch_for_latency(planner.clauses)
        max_num_seqs = m.max_num_seqs if math.isinf(cap) else max(1, min(1024, int(cap)))
    pred = planner.predict(replicas=1, max_num_seqs=max_num_seqs)
    warnings += pred.warnings
    per = pred.lambda_star_per_replica_rps
    if per <= 0:
        raise ValueError(f"predicted λ* per replica is {per:g} rps at max_num_seqs={max_num_seqs}: "
                         "the SLO cannot be met with this configuration")
    replicas = max(1, math.ceil(target_rps / (per * utilization) - 1e-9))
    if replicas > m.replicas:
        warnings.append(f"{replicas} replicas: assumes λ* scales linearly with replicas (measured with {m.replicas})")
    top = planner.points[-1].rate_rps
    if target_rps / replicas > top / m.replicas:
        warnings.append(f"per-replica operating rate {target_rps / replicas:.3g} rps is above the highest measured "
                        f"{top / m.replicas:.3g} rps")
    op_rate = target_rps / replicas
    in_flight = model.batch_at(op_rate)
    if not math.isfinite(in_flight):
        in_flight = float(max_num_seqs)
    target_ongoing = round(max(1.0, min(in_flight, max_num_seqs)), 1)
    gpus = replicas * m.devices_per_replica
    usd_h = None if gpu_hourly_usd is None else gpus * gpu_hourly_usd
    out_per_h = target_rps * model.output_tokens * 3600
    usd_m = None if usd_h is None or out_per_h <= 0 else usd_h / out_per_h * 1e6
    min_replicas = max(1, math.ceil(min_rps / (per * utilization) - 1e-9)) if min_rps > 0 else 1
    return CapacityPlan(
        arm=m.arm, slo=slo_text, target_rps=target_rps, utilization=utilization, replicas=replicas, gpus=gpus,
        gpu_hourly_usd=gpu_hourly_usd, usd_per_hour=usd_h, usd_per_million_output_tokens=usd_m,
        max_num_seqs=max_num_seqs, target_ongoing_requests=target_ongoing, min_replicas=min(min_replicas, replicas),
        lambda_star_per_replica_rps=per, measured_lambda_star_per_replica_rps=planner.lam.per_replica_rps,
        measured=asdict(m), model={**asdict(model), "calibration": {"latency": planner.calibration_latency,
                                                                   "queue": planner.calibration_queue}}, warnings=warnings,
    )
