"""A/B report from Prometheus: per-arm statistics of live traffic over a time window.

`collect` reads corral's own series over [since, until] (`corral.rollout.promstats`; names in
`cluster/metric_names.py`); `report` turns them into rows with 95% intervals and a candidate vs
baseline test (pure). Per arm:

- requests and error rate (5xx share): Wilson interval, two-proportion z-test.
- TTFT, ITL and end-to-end latency p50/p95/p99 from the ingress's histograms, interpolated
  inside the bucket as Prometheus' `histogram_quantile` does (prometheus/promql/quantile.go,
  `bucketQuantile`: linear within the bucket, the +Inf bucket answers its lower edge).
  **Bucket error**: the true quantile lies anywhere in the bucket that holds it; the buckets are
  log-spaced (`cluster/metric_names.py` `log_buckets`: TTFT and ITL 20 per decade, 12% apart; latency
  10 per decade, 26% apart), so a quantile is good to about +/-6% (+/-13% for latency) beyond its
  sampling interval. Each quantile row names its bucket. The interval is distribution-free: the
  ranks n q +/- z sqrt(n q (1 - q)) mapped through the same interpolation.
- geometric mean of TTFT, ITL and latency (each request at its bucket's geometric midpoint) with
  a t interval on the logs; Welch's t-test on the logs compares the arms (their ratio is shown).
- output tokens per second and per request: totals over the window (no interval: not a sample).
- satisfaction: share of `/v1/feedback` ratings above 0.5 (Wilson, z-test) and their mean
  (`_sum / _count`; Ray's exporter records each rating at its bucket's midpoint).
- golden-set accuracy when a rollout recorded one (share of golden prompts answered right; Wilson
  interval over the prompts, z-test).
- shadow copies (a rollout's shadow stage, `ray_corral_shadow_*`), in rows of their own and
  only when there were any: copies per arm, their 5xx share (Wilson), TTFT and latency p95, and
  the pass rate of shadow answers to golden prompts in user traffic (Wilson). They are never
  part of the user rows above or of the cost below.
- cost per 1M output tokens = GPU $/hour x GPUs per replica x replica-seconds / 3600 / output tokens
  x 1e6. Replica-seconds integrate Ray Serve's `ray_serve_deployment_replica_healthy` gauge of the
  arm's LLMServer deployment (healthy replicas, sampled every `step_s`) over the window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from corral.cluster import metric_names as mn
from corral.common.stats import (
    Comparison,
    Estimate,
    proportion_ci,
    t_critical,
    two_proportion_z_test,
    welch_t_test_from_stats,
    z_critical,
)
from corral.rollout import promstats
from corral.rollout.ab import Row
from corral.rollout.gates import format_window
from corral.rollout.sequential import log_histogram_sample
from corral.serving.prometheus import PrometheusClient

QUANTILES = (0.5, 0.95, 0.99)
TIMED = ("ttft", "itl", "latency")
SHADOW_TIMED = ("ttft", "latency")
HEALTHY = "ray_serve_deployment_replica_healthy"


@dataclass
class ArmData:
    """What Prometheus holds about one arm over the window."""

    requests: float = 0.0
    errors: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    histograms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """ttft, itl, latency, feedback -> cumulative [(le, count), ...]."""
    feedback_sum: float = 0.0
    replica_seconds: float | None = None
    golden_score: float | None = None
    golden_prompts: int = 0
    shadow_requests: float = 0.0
    """Shadow copies the arm answered (never user traffic)."""
    shadow_errors: float = 0.0
    shadow_histograms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """ttft, latency of the shadow copies -> cumulative [(le, count), ...]."""
    shadow_golden: tuple[float, float] = (0.0, 0.0)
    """(passed, scored) shadow answers to golden prompts."""


@dataclass
class TimeSeries:
    """Per-arm request and 5xx rates over the window (for the HTML plots)."""

    t: list[float] = field(default_factory=list)
    rps: dict[str, list[float]] = field(default_factory=dict)
    errors_rps: dict[str, list[float]] = field(default_factory=dict)


def replica_seconds(client: PrometheusClient, deployment: str, since: float, until: float, step_s: float) -> float | None:
    """Integral of the deployment's healthy replicas over [since, until] (trapezoids on a `step_s` grid;
    a missing point counts as 0 replicas)."""
    rows = client.matrix(f'sum({HEALTHY}{{deployment="{deployment}"}})', since, until, step_s)
    if not rows:
        return None
    pts = {round((float(t) - since) / step_s): float(v) for t, v in rows[0]["values"] if math.isfinite(float(v))}
    n = int(math.floor((until - since) / step_s + 1e-9))
    ys = [pts.get(i, 0.0) for i in range(n + 1)]
    return sum((a + b) / 2 for a, b in zip(ys, ys[1:])) * step_s + ys[-1] * ((until - since) - n * step_s)


def collect(client: PrometheusClient, route: str, arms: list[str], since: float, until: float,
            deployments: dict[str, str] | None = None, step_s: float | None = None) -> dict[str, ArmData]:
    """Every per-arm total and histogram over [since, until]; `deployments`: arm -> Serve deployment."""
    window = until - since
    if window <= 0:
        raise ValueError(f"--since ({since}) must be before --until ({until})")
    step = step_s or default_step(window)
    out = {}
    for arm in arms:
        d = ArmData()
        d.requests, d.errors = promstats.requests_and_errors(client, route, arm, window, until)
        d.input_tokens = promstats.total(client, mn.INPUT_TOKENS, route, arm, window, until)
        d.output_tokens = promstats.total(client, mn.OUTPUT_TOKENS, route, arm, window, until)
        for h in (*TIMED, "feedback"):
            d.histograms[h] = promstats.buckets(client, h, route, arm, window, until)
        q = f"sum(increase({mn.exported(mn.FEEDBACK)}_sum{promstats.selector(route, arm)}[{format_window(window)}]))"
        d.feedback_sum = client.query(q, until) or 0.0
        d.shadow_requests, d.shadow_errors = promstats.requests_and_errors(client, route, arm, window, until, shadow=True)
        if d.shadow_requests > 0:
            for h in SHADOW_TIMED:
                d.shadow_histograms[h] = promstats.buckets(client, h, route, arm, window, until, shadow=True)
            passed, failed = (promstats.total(client, mn.SHADOW_GOLDEN, route, arm, window, until,
                                              extra=f'result="{r}"') for r in ("pass", "fail"))
            d.shadow_golden = (passed, passed + failed)
        if deployments and arm in deployments:
            d.replica_seconds = replica_seconds(client, deployments[arm], since, until, step)
        out[arm] = d
    return out


def default_step(window_s: float) -> float:
    """About 120 points per plot, never finer than Prometheus' 5 s scrape interval here."""
    return max(5.0, round(window_s / 120))


def time_series(client: PrometheusClient, route: str, since: float, until: float,
                step_s: float | None = None) -> TimeSeries:
    step = step_s or default_step(until - since)
    rate_w = format_window(max(2 * step, 30.0))
    name, sel = mn.exported(mn.REQUESTS), f'route="{route}"'
    ts = TimeSeries()
    raw: list[dict[str, dict[float, float]]] = [{}, {}]
    for by_arm, extra in ((raw[0], ""), (raw[1], f',status=~"{mn.SERVER_ERROR_STATUS_RE}"')):
        for r in client.matrix(f"sum by (arm) (rate({name}{{{sel}{extra}}}[{rate_w}]))", since, until, step):
            pts = {float(t): float(v) for t, v in r["values"]}
            ts.t = sorted(set(ts.t) | set(pts))
            by_arm[r["metric"].get("arm", "?")] = pts
    for target, by_arm in ((ts.rps, raw[0]), (ts.errors_rps, raw[1])):
        for arm, pts in by_arm.items():
            target[arm] = [pts.get(t, 0.0) for t in ts.t]
    return ts


# -- statistics (pure) ------------------------------------------------------------------------


def bucket_rank_value(bs: list[tuple[float, float]], rank: float) -> tuple[float, float, float] | None:
    """The value at `rank` (0..n) by linear interpolation within its bucket, and that bucket's
    (lower, upper) edges; Prometheus' `bucketQuantile` rule (first bucket's lower edge is 0,
    a rank in the +Inf bucket answers the last finite edge)."""
    if not bs or bs[-1][1] <= 0:
        return None
    finite = [(le, c) for le, c in bs if math.isfinite(le)]
    prev_le, prev_c = 0.0, 0.0
    for le, c in finite:
        if c >= rank and c > prev_c:
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), prev_le, le
        prev_le, prev_c = le, max(prev_c, c)
    return prev_le, prev_le, math.inf


def histogram_quantile(bs: list[tuple[float, float]], q: float) -> tuple[Estimate, tuple[float, float] | None]:
    """(estimate with a distribution-free interval, bucket holding the estimate)."""
    n = bs[-1][1] if bs else 0.0
    mid = bucket_rank_value(bs, q * n) if n > 0 else None
    if mid is None:
        return Estimate(None, None, None, 0), None
    half = z_critical() * math.sqrt(n * q * (1 - q))
    lo = bucket_rank_value(bs, max(0.0, q * n - half)) if q * n - half >= 1 else None
    hi = bucket_rank_value(bs, q * n + half) if q * n + half <= n else None
    return Estimate(mid[0], lo[0] if lo else None, hi[0] if hi and math.isfinite(hi[2]) else None, int(n)), (mid[1], mid[2])


def _geomean(bs) -> tuple[Estimate, tuple[float, float, float] | None]:
    s = log_histogram_sample(bs)
    if s is None:
        return Estimate(None, None, None, 0), None
    if s.n < 2:
        return Estimate(math.exp(s.mean), None, None, int(s.n)), (s.mean, s.var, s.n)
    half = t_critical(s.n - 1) * math.sqrt(s.var / s.n)
    return Estimate(math.exp(s.mean), math.exp(s.mean - half), math.exp(s.mean + half), int(s.n)), (s.mean, s.var, s.n)


def _plain(value: float | None, n: float = 0) -> Estimate:
    return Estimate(value, None, None, int(n))


def report(data: dict[str, ArmData], baseline: str, candidate: str, duration_s: float,
           gpu_hourly_usd: float | None, gpus_per_replica: dict[str, int]) -> list[Row]:
    """Rows of (metric, per-arm estimate with interval, candidate-vs-baseline test, note)."""
    for name in (baseline, candidate):
        data.setdefault(name, ArmData())
    arms = list(data)
    ri = {k: int(round(v.requests)) for k, v in data.items()}
    ei = {k: int(round(v.errors)) for k, v in data.items()}
    rows = [
        # increase() extrapolates a counter to the window's edges: a count with a fraction. The
        # integer is what the tests below use too (ri).
        Row("requests", {k: _plain(ri[k], ri[k]) for k in arms}, None,
            f"over {duration_s:.0f} s (Prometheus increase(), rounded)"),
        Row("error_rate", {k: proportion_ci(ei[k], ri[k]) for k in arms},
            two_proportion_z_test(ei[candidate], ri[candidate], ei[baseline], ri[baseline]), "5xx share"),
    ]
    for h in TIMED:
        geo = {k: _geomean(v.histograms.get(h, [])) for k, v in data.items()}
        gb, gc = geo[baseline][1], geo[candidate][1]
        cmp_ = welch_t_test_from_stats(*gc, *gb) if gb and gc else Comparison("welch-t", None, None)
        ratio = ""
        if gb and gc:
            ratio = f"candidate/baseline {math.exp(gc[0] - gb[0]):.3g}; "
        rows.append(Row(f"{h}_geomean_s", {k: e for k, (e, _) in geo.items()}, cmp_,
                        ratio + "test on log values"))
        for q in QUANTILES:
            ests, notes = {}, []
            for k, v in data.items():
                e, bucket = histogram_quantile(v.histograms.get(h, []), q)
                ests[k] = e
                if bucket is not None:
                    hi = "+Inf" if math.isinf(bucket[1]) else f"{bucket[1]:.3g}"
                    notes.append(f"{k} in ({bucket[0]:.3g}, {hi}]")
            rows.append(Row(f"{h}_p{int(q * 100)}_s", ests, None, "bucket " + "; ".join(notes) if notes else ""))
    if duration_s > 0:
        rows.append(Row("output_tokens_per_s", {k: _plain(v.output_tokens / duration_s, v.requests)
                                                for k, v in data.items()}, None, "total / window"))
    rows.append(Row("output_tokens_per_request",
                    {k: _plain(v.output_tokens / v.requests if v.requests else None, v.requests) for k, v in data.items()},
                    None, "total / requests"))
    fb = {k: tuple(int(round(x)) for x in promstats.feedback_pass(v.histograms.get("feedback", [])))
          for k, v in data.items()}
    rows.append(Row("satisfaction_pass_rate", {k: proportion_ci(p, n) for k, (n, p) in fb.items()},
                    two_proportion_z_test(fb[candidate][1], fb[candidate][0], fb[baseline][1], fb[baseline][0]),
                    "share of /v1/feedback ratings > 0.5"))
    rows.append(Row("satisfaction_mean", {k: _plain(v.feedback_sum / n if n else None, n)
                                          for (k, v), (n, _) in zip(data.items(), fb.values())}, None,
                    "ratings at bucket midpoints"))
    if any(v.golden_score is not None for v in data.values()):
        g = {k: (int(round(v.golden_score * v.golden_prompts)), v.golden_prompts) if v.golden_score is not None
             else (0, 0) for k, v in data.items()}
        rows.append(Row("golden_accuracy", {k: proportion_ci(x, n) for k, (x, n) in g.items()},
                        two_proportion_z_test(*g[candidate], *g[baseline]), "rollout's golden-set run"))
    if any(v.shadow_requests > 0 for v in data.values()):
        rows += _shadow_rows(data)
    rows.append(Row("replica_seconds", {k: _plain(v.replica_seconds) for k, v in data.items()}, None,
                    f"integral of {HEALTHY}"))
    if gpu_hourly_usd is not None:
        cost = {}
        for k, v in data.items():
            if v.replica_seconds is None or v.output_tokens <= 0:
                cost[k] = _plain(None)
                continue
            spend = gpu_hourly_usd * gpus_per_replica.get(k, 1) * v.replica_seconds / 3600
            cost[k] = _plain(spend / v.output_tokens * 1e6, v.requests)
        rows.append(Row("cost_per_1m_output_tokens_usd", cost, None,
                        f"${gpu_hourly_usd:g}/GPU-h x GPUs x replica-s / tokens"))
    return rows


def _shadow_rows(data: dict[str, ArmData]) -> list[Row]:
    """The shadow stage's rows: the copies each arm answered (not user traffic, not in cost)."""
    n = {k: int(round(v.shadow_requests)) for k, v in data.items()}
    rows = [Row("shadow_requests", {k: _plain(n[k], n[k]) for k in data}, None,
                "shadow copies answered (a rollout's shadow stage; not user traffic, not in cost)"),
            Row("shadow_error_rate", {k: proportion_ci(int(round(v.shadow_errors)), n[k]) for k, v in data.items()},
                None, "5xx share of shadow copies")]
    for h in SHADOW_TIMED:
        ests, notes = {}, []
        for k, v in data.items():
            e, bucket = histogram_quantile(v.shadow_histograms.get(h, []), 0.95)
            ests[k] = e
            if bucket is not None:
                hi = "+Inf" if math.isinf(bucket[1]) else f"{bucket[1]:.3g}"
                notes.append(f"{k} in ({bucket[0]:.3g}, {hi}]")
        rows.append(Row(f"shadow_{h}_p95_s", ests, None, "shadow copies; bucket " + "; ".join(notes) if notes
                        else "shadow copies"))
    if any(v.shadow_golden[1] > 0 for v in data.values()):
        g = {k: (int(round(v.shadow_golden[0])), int(round(v.shadow_golden[1]))) for k, v in data.items()}
        rows.append(Row("shadow_golden_pass_rate", {k: proportion_ci(p, t) for k, (p, t) in g.items()}, None,
                        "shadow answers to golden prompts in user traffic, scored by the golden set's rule"))
    return rows


def rows_to_json(rows: list[Row]) -> list[dict]:
    out = []
    for r in rows:
        out.append({"metric": r.metric, "note": r.note,
                    "arms": {k: asdict(e) for k, e in r.estimates.items()},
                    "test": None if r.comparison is None else {**asdict(r.comparison),
                                                               "significant": r.comparison.significant}})
    return out
