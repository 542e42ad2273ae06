"""The `rollout:` section of a fleet file: how a candidate arm replaces a baseline arm.

A rollout moves one route's traffic from `baseline` to `candidate` through `steps`
(candidate weight, bake time, minimum evidence). At every `analysis_interval_s` the
controller measures the metric `gates` (PromQL templates, most of them compared with
the baseline) and, before the first traffic, the `quality` gate (a golden prompt set
run against both arms). Semantics follow Argo Rollouts analysis: a gate result is
pass, fail or inconclusive; more than `failure_limit` failures roll back; more than
`inconclusive_limit` inconclusive analyses after the bake time pause the rollout.

Test fleets keep rollouts fast by setting short `bake_s` / `analysis_interval_s` here;
the controller has no special test code path.
"""

from __future__ import annotations

import math
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.cluster import metric_names as mn


class _Strict(BaseModel):
    # Same policy as fleet.StrictModel (not imported from there: fleet.py imports this module).
    model_config = ConfigDict(extra="forbid", validate_default=True)


# Placeholders a PromQL gate template may use (string.Template syntax: $name or ${name};
# PromQL's own braces stay literal). Metric names resolve to the exported series names.
METRIC_PLACEHOLDERS = {
    "requests": mn.exported(mn.REQUESTS),
    "latency": mn.exported(mn.LATENCY),
    "ttft": mn.exported(mn.TTFT),
    "itl": mn.exported(mn.ITL),
    "input_tokens": mn.exported(mn.INPUT_TOKENS),
    "output_tokens": mn.exported(mn.OUTPUT_TOKENS),
    "feedback": mn.exported(mn.FEEDBACK),
}
# The same placeholders for the candidate during a shadow stage: its shadow series (feedback has
# none: no user rates a shadow answer, and gates on it are left out of shadow analyses).
SHADOW_METRIC_PLACEHOLDERS = {
    key: mn.exported(mn.SHADOW_OF.get(name.removeprefix(mn.PREFIX), name.removeprefix(mn.PREFIX)))
    for key, name in METRIC_PLACEHOLDERS.items()
}
RUNTIME_PLACEHOLDERS = ("route", "arm", "window")
PLACEHOLDERS = tuple(METRIC_PLACEHOLDERS) + RUNTIME_PLACEHOLDERS


def template_placeholders(template: str) -> list[str]:
    """Names used by a `string.Template`; raises ValueError on a malformed `$`."""
    names = []
    for match in string.Template.pattern.finditer(template):
        if match.group("invalid") is not None:
            raise ValueError(f"stray '$' at offset {match.start('invalid')} in {template!r} (write $$ for a literal $)")
        name = match.group("named") or match.group("braced")
        if name:
            names.append(name)
    return names


class RolloutStep(_Strict):
    """One traffic step: the candidate's share and what must hold before the next step."""

    weight: int = Field(ge=1, le=100)
    """Candidate's percentage of the route's traffic during this step (baseline gets the rest)."""
    bake_s: float = Field(300.0, ge=0)
    """Time the step must run, counted from when its weights took effect, before promotion."""
    min_requests: int = Field(100, ge=0)
    """Requests each arm that gets traffic must serve during the step before promotion
    (too few = inconclusive, never a promotion)."""


SequentialMetric = Literal["error_rate", "latency", "ttft", "itl", "quality_pass_rate"]
SEQUENTIAL_METRICS: dict[str, str] = {
    "error_rate": "share of requests answered 5xx; margin = how many points (0.01 = 1%) the candidate's "
                  "rate may exceed the baseline's",
    "latency": "end-to-end latency; compared as candidate/baseline ratio of geometric means; margin = largest "
               "acceptable ratio (1.2 = 20% slower)",
    "ttft": "time to first token; ratio of geometric means as for latency",
    "itl": "mean inter-token latency per request; ratio of geometric means as for latency",
    "quality_pass_rate": "share of /v1/feedback ratings above 0.5; margin = how many points the candidate's "
                         "share may fall below the baseline's",
}
"""What a `test: sequential` gate can measure (each from corral's own series, per arm, over the step)."""


class MetricGate(_Strict):
    """A gate: a PromQL measurement per arm and the bound it must respect, or a sequential test.

    `test: threshold` (default): `query` is a template: `$route`, `$arm`, `$window` (e.g. `60s`)
    and the metric names `$requests`, `$latency`, `$ttft`, `$itl`, `$input_tokens`,
    `$output_tokens`, `$feedback` (write `${ttft}_bucket` for histogram buckets). It must
    evaluate to one number per arm. With `compare: ratio` the gate bounds candidate / baseline;
    with `absolute` it bounds the candidate's own value.

    `test: sequential`: an always-valid comparison of candidate and baseline on `metric`, from
    every request of the step so far (see `corral.rollout.sequential`): pass as soon as a
    confidence sequence at level 1 - `alpha` shows the candidate is not worse by more than
    `margin`, fail as soon as it shows it is worse by more than `margin`, inconclusive until then.
    """

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    """Gate id shown in events and reports."""
    test: Literal["threshold", "sequential"] = "threshold"
    """`threshold`: compare one PromQL reading per arm with `max`/`min` at each analysis.
    `sequential`: always-valid test of `metric` against `margin` with error rate `alpha`."""
    query: str = ""
    """PromQL template (threshold gates; see the class docstring)."""
    compare: Literal["ratio", "absolute"] = "ratio"
    """`ratio`: bound candidate / baseline. `absolute`: bound the candidate's value."""
    max: float | None = None
    """Upper bound (higher is worse), e.g. 1.5 = candidate at most 50% worse than baseline."""
    min: float | None = None
    """Lower bound (lower is worse), e.g. 0.9 for goodput."""
    floor: float = Field(0.0, ge=0)
    """Values below `floor` count as `floor` before comparing, so a tiny baseline (0 errors)
    does not turn noise into a huge ratio. In the metric's own unit."""
    metric: SequentialMetric | None = None
    """Sequential gates: what to compare (`error_rate`, `latency`, `ttft`, `itl`, `quality_pass_rate`)."""
    margin: float | None = Field(None, gt=0)
    """Sequential gates: how much worse the candidate may be. For `error_rate` and
    `quality_pass_rate` a difference of proportions (0.02 = 2 points); for `latency`, `ttft`,
    `itl` a ratio of geometric means above 1 (1.25 = 25% slower). Latency histograms have
    buckets 12% (TTFT, ITL) or 26% (latency) apart, so a latency margin should be wider than that."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Sequential gates: error rate. The chance that the gate ever passes a candidate worse by
    more than `margin`, or ever fails one that is not, over the whole step however often it is
    checked (asymptotically)."""
    design_n: int = Field(500, ge=1)
    """Sequential gates: requests per arm at which the confidence sequence is tightest (it is
    valid at every count; this only tunes where it is narrowest)."""

    @property
    def reads_user_feedback(self) -> bool:
        """Does the gate measure users' `/v1/feedback` ratings (none exist for shadow answers)?"""
        return self.metric == "quality_pass_rate" or "feedback" in template_placeholders(self.query)

    @field_validator("query")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = sorted(set(template_placeholders(value)) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"query uses unknown placeholder(s) {unknown}; known: {list(PLACEHOLDERS)}")
        return value

    @model_validator(mode="after")
    def _has_bound(self) -> MetricGate:
        if self.test == "sequential":
            if self.metric is None or self.margin is None:
                raise ValueError(f"sequential gate {self.name!r} needs metric (one of {list(SEQUENTIAL_METRICS)}) "
                                 f"and margin")
            if self.metric in ("latency", "ttft", "itl") and self.margin <= 1:
                raise ValueError(f"sequential gate {self.name!r}: margin for {self.metric} is a ratio and "
                                 f"must be > 1 (got {self.margin})")
            if self.metric in ("error_rate", "quality_pass_rate") and self.margin >= 1:
                raise ValueError(f"sequential gate {self.name!r}: margin for {self.metric} is a difference "
                                 f"of proportions and must be < 1 (got {self.margin})")
            if self.query or self.max is not None or self.min is not None:
                raise ValueError(f"sequential gate {self.name!r}: query, max and min belong to threshold gates")
            return self
        if self.metric is not None or self.margin is not None:
            raise ValueError(f"gate {self.name!r}: metric and margin belong to `test: sequential` gates")
        if not self.query:
            raise ValueError(f"gate {self.name!r}: a threshold gate needs a query")
        if self.max is None and self.min is None:
            raise ValueError(f"gate {self.name!r} sets neither max nor min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"gate {self.name!r}: min ({self.min}) is larger than max ({self.max})")
        if self.compare == "ratio" and self.floor == 0.0 and self.max is not None:
            # 0 / 0 and x / 0 have no meaningful ratio; force the author to pick a floor.
            raise ValueError(f"gate {self.name!r}: a ratio gate with max needs floor > 0 (got floor={self.floor})")
        return self


_SEL = 'route="$route",arm="$arm"'


def default_gates() -> list[MetricGate]:
    """Gates for a Llama 2 -> Llama 3 migration on the same hardware class.

    Llama 3 8B has a bigger vocabulary and GQA: TTFT and inter-token latency should be
    close to Llama 2 7B's, so 30% worse is a regression; errors may not double.
    """
    return [
        MetricGate(
            name="error_rate",
            # Every server-side outcome: 5xx answers, errors in a stream, arm exceptions, timeouts.
            query=(f'(sum(rate($requests{{{_SEL},status=~"{mn.SERVER_ERROR_STATUS_RE}"}}[$window])) or vector(0))'
                   f" / sum(rate($requests{{{_SEL}}}[$window]))"),
            compare="ratio", max=2.0, floor=0.01,
        ),
        MetricGate(
            name="ttft_p95",
            query=f"histogram_quantile(0.95, sum by (le) (rate(${{ttft}}_bucket{{{_SEL}}}[$window])))",
            compare="ratio", max=1.3, floor=0.05,
        ),
        MetricGate(
            name="itl_p95",
            query=f"histogram_quantile(0.95, sum by (le) (rate(${{itl}}_bucket{{{_SEL}}}[$window])))",
            compare="ratio", max=1.3, floor=0.005,
        ),
        MetricGate(
            # Goodput: share of requests answered successfully with the end-to-end latency
            # within the SLO bucket (10 s; the ingress's latency histogram must have a 10.0 boundary).
            name="goodput",
            query=(f'sum(rate(${{latency}}_bucket{{{_SEL},le=~"10|10\\\\.0"}}[$window]))'
                   f" / sum(rate($requests{{{_SEL}}}[$window]))"),
            compare="ratio", min=0.9, floor=0.01,
        ),
    ]


def default_steps() -> list[RolloutStep]:
    """A/B at 50/50 long enough to compare, then 70, 90, 100."""
    return [
        RolloutStep(weight=50, bake_s=1800, min_requests=500),
        RolloutStep(weight=70, bake_s=600, min_requests=300),
        RolloutStep(weight=90, bake_s=600, min_requests=300),
        RolloutStep(weight=100, bake_s=600, min_requests=300),
    ]


class QualityGate(_Strict):
    """A golden prompt set run against both arms (pinned by arm name) before traffic moves."""

    enabled: bool = True
    """Run the golden set at all."""
    golden_set: str = "builtin:llama_basic"
    """`builtin:<name>` (shipped in corral/rollout/golden/) or a JSONL path (relative
    paths are resolved against the fleet file's folder by the controller)."""
    min_score: float = Field(0.5, ge=0, le=1)
    """Fewest share of golden prompts the candidate must answer acceptably."""
    max_drop: float = Field(0.05, ge=0, le=1)
    """How far the candidate's score may fall below the baseline's."""
    every_step: bool = False
    """Re-run before each step's weight change, not only before the first."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Per-prompt HTTP timeout."""


class CapacitySpec(_Strict):
    """Capacity before traffic: the candidate gets warm replicas before its share grows."""

    min_ready_replicas: int = Field(1, ge=0)
    """Ready candidate replicas required before any step's weight is applied."""
    scale_with_weight: bool = True
    """Also require ceil(weight% x baseline's ready replicas at rollout start) replicas,
    capped at the candidate's `replicas.max`."""
    warmup_timeout_s: float = Field(900.0, gt=0)
    """Waiting longer than this for ready replicas pauses the rollout (weights unchanged)."""
    dead_after_s: float = Field(120.0, gt=0)
    """An arm is dead once its Serve deployment has been UNHEALTHY or DEPLOY_FAILED, or has had
    zero running replicas while it has traffic, for longer than this: a dead candidate rolls
    the rollout back, a dead baseline pauses it."""


class ShadowSpec(_Strict):
    """A shadow stage before the first weight step (off unless `percent` > 0).

    For `percent`% of the route's requests (chosen per user by a seeded hash, else per request)
    the ingress also sends a copy to the candidate in the background; users get only the
    baseline's answer, the candidate's is read and discarded. The candidate's latency, outcome and
    tokens go to separate `ray_corral_shadow_*` series, so they are never counted as user traffic
    or cost; the rollout's gates compare those with the baseline's user series for `duration_s`.
    """

    percent: float = Field(0.0, ge=0, le=100)
    """Share of the route's requests copied to the candidate, in percent (0 = no shadow stage)."""
    duration_s: float = Field(600.0, gt=0)
    """How long the shadow stage runs, counted from when the ingress applies it; it ends once this
    has passed and the latest analysis passed."""
    min_requests: int = Field(50, ge=0)
    """Shadow requests the candidate (and user requests the baseline) must have answered during
    the stage before it may end (too few = inconclusive, never a pass)."""
    max_in_flight: int = Field(4, ge=1)
    """Shadow copies in flight per route and ingress replica; a copy beyond this is dropped and
    counted (`ray_corral_shadow_dropped_total`), never queued."""
    timeout_s: float = Field(120.0, gt=0)
    """A shadow copy still unanswered after this many seconds is cancelled (outcome `timeout`)."""
    golden: bool = True
    """Score the candidate's shadow answers on the golden subset: copies of user requests whose
    prompt is one of the quality gate's golden prompts are judged by that prompt's rule, and the
    `shadow_golden` check compares their pass rate with the baseline's golden-set score (always-valid
    test at `golden_alpha`, margin `quality.max_drop`): a candidate shown worse rolls back. Golden
    prompts in user traffic are evidence when they come; their absence never holds the stage.
    Needs `quality.enabled` (the baseline's score comes from the golden-set run)."""
    golden_alpha: float = Field(0.05, gt=0, lt=0.5)
    """Error rate of the `shadow_golden` check over the whole stage, however often it is looked at."""

    @property
    def enabled(self) -> bool:
        return self.percent > 0


class RolloutSpec(_Strict):
    """A staged migration of one route from `baseline` to `candidate`."""

    route: str
    """Route (public model name) whose weights the rollout moves."""
    baseline: str
    """Arm that serves the route today."""
    candidate: str
    """Arm that should serve it at the end."""
    steps: list[RolloutStep] = Field(default_factory=default_steps, min_length=1)
    """Candidate weights in increasing order, the last one 100."""
    analysis_interval_s: float = Field(60.0, gt=0)
    """Time between two analyses (gate measurements) within a step."""
    analysis_window_s: float = Field(300.0, gt=0)
    """Longest PromQL range (`$window`); shorter early in a step so only this step's traffic counts."""
    min_window_s: float = Field(30.0, gt=0)
    """Shortest PromQL range (Prometheus `rate` needs at least two scrapes in it)."""
    failure_limit: int = Field(1, ge=0)
    """Failed analyses tolerated during the rollout; one more rolls back at once."""
    inconclusive_limit: int = Field(3, ge=0)
    """Consecutive inconclusive analyses after the bake time tolerated; one more pauses."""
    error_limit: int = Field(1, ge=0)
    """Consecutive metric-source errors (Prometheus unreachable) tolerated in phase Error;
    one more pauses the rollout."""
    min_sample_requests: int = Field(20, ge=0)
    """Requests each arm with traffic must have served in the step before a gate may
    fail; with fewer the analysis is inconclusive (a handful of requests is noise)."""
    gates: list[MetricGate] = Field(default_factory=default_gates)
    """Metric gates evaluated at every analysis."""
    quality: QualityGate = Field(default_factory=QualityGate)
    """Golden prompt set gate."""
    capacity: CapacitySpec = Field(default_factory=CapacitySpec)
    """Capacity-before-traffic settings."""
    shadow: ShadowSpec = Field(default_factory=ShadowSpec)
    """Shadow stage before the first step (off by default)."""

    @model_validator(mode="after")
    def _own_checks(self) -> RolloutSpec:
        if self.baseline == self.candidate:
            raise ValueError(f"baseline and candidate are the same arm ({self.baseline!r})")
        weights = [s.weight for s in self.steps]
        if any(b <= a for a, b in zip(weights, weights[1:])):
            raise ValueError(f"step weights must increase strictly, got {weights}")
        if weights[-1] != 100:
            raise ValueError(f"the last step must send 100% to the candidate, got steps {weights}")
        names = [g.name for g in self.gates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"gate name(s) {dup} used more than once")
        if self.min_window_s > self.analysis_window_s:
            raise ValueError(
                f"min_window_s ({self.min_window_s}) is larger than analysis_window_s ({self.analysis_window_s})"
            )
        return self

    def check_against(self, arm_names: list[str], routes: dict[str, list[str]]) -> None:
        """Cross-check with the fleet: `routes` maps route name -> its arm names.

        Called by FleetSpec's validator; raises ValueError quoting the bad values.
        """
        for role, arm in (("baseline", self.baseline), ("candidate", self.candidate)):
            if arm not in arm_names:
                raise ValueError(f"rollout.{role} {arm!r} is not an arm; arms are {arm_names}")
        if self.route not in routes:
            raise ValueError(f"rollout.route {self.route!r} is not a route; routes are {sorted(routes)}")
        route_arms = routes[self.route]
        missing = [a for a in (self.baseline, self.candidate) if a not in route_arms]
        if missing:
            raise ValueError(
                f"route {self.route!r} must list baseline and candidate (candidate with weight 0); "
                f"missing {missing}, it lists {route_arms}"
            )
        others = [a for a in route_arms if a not in (self.baseline, self.candidate)]
        if others:
            raise ValueError(
                f"route {self.route!r} lists arm(s) {others} besides baseline {self.baseline!r} and "
                f"candidate {self.candidate!r}; a rollout moves a two-arm route"
            )


def needed_replicas(capacity: CapacitySpec, weight: int, baseline_replicas: int, candidate_max: int) -> int:
    """Ready candidate replicas required before sending it `weight`% of the route."""
    need = capacity.min_ready_replicas
    if capacity.scale_with_weight:
        need = max(need, math.ceil(weight * baseline_replicas / 100))
    return min(need, candidate_max)
