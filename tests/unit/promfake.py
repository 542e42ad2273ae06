"""A fake Prometheus HTTP API over synthetic per-request events, for unit tests.

It evaluates the query shapes corral issues (`sum(increase(x{sel}[w]))`, `sum by (le|arm)
(increase|rate(...))`, `sum(gauge{sel})`, with `or vector(0)`) exactly over the events, at
`time=` for instant queries and on the `start/end/step` grid for `query_range`, and answers in
Prometheus' JSON format. Counts are exact (a real Prometheus extrapolates `increase` to the
window's edges).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from http_stub import JsonHttpStub

from corral.cluster.metric_names import ITL_BUCKETS_S, LATENCY_BUCKETS_S, TTFT_BUCKETS_S

BUCKETS = {
    "ray_corral_ttft_seconds": TTFT_BUCKETS_S,
    "ray_corral_itl_seconds": ITL_BUCKETS_S,
    "ray_corral_request_latency_seconds": LATENCY_BUCKETS_S,
    "ray_corral_feedback_score": [0.25, 0.5, 0.75, 1.0],
}
FIELD = {"ray_corral_ttft_seconds": "ttft", "ray_corral_itl_seconds": "itl",
         "ray_corral_request_latency_seconds": "latency", "ray_corral_feedback_score": "score"}


@dataclass
class Req:
    t: float
    route: str
    arm: str
    status: int = 200
    latency: float = 1.0
    ttft: float = 0.2
    itl: float = 0.05
    input_tokens: int = 20
    output_tokens: int = 30
    shadow: bool = False
    """A shadow copy (serving/shadow.py): counted only in the `ray_corral_shadow_*` series."""


@dataclass
class Feedback:
    t: float
    route: str
    arm: str
    score: float


_SEL = re.compile(r'(\w+)(=~|=)"((?:[^"\\]|\\.)*)"')
_Q = re.compile(r"^sum(?: by \((\w+)\))? ?\((?:(increase|rate)\()?([a-z_]+)\{([^}]*)\}(?:\[(\d+)s\]\))?\)( or vector\(0\))?$")


class FakePrometheus(JsonHttpStub):
    def __init__(self, requests=(), feedback=(), replicas=None, now: float = 0.0):
        self.requests, self.feedback = list(requests), list(feedback)
        self.now = now  # the evaluation time of instant queries without `time=`
        self.replicas = replicas or {}  # deployment -> healthy replicas (constant)
        self.queries: list[str] = []
        super().__init__()

    def handle(self, method, path, headers, body):
        u = urlparse(path)
        p = {k: v[0] for k, v in parse_qs(u.query).items()}
        self.queries.append(p["query"])
        try:
            if u.path.endswith("/query_range"):
                return 200, self.range(p["query"], float(p["start"]), float(p["end"]), float(p["step"]))
            return 200, self.instant(p["query"], float(p["time"]) if "time" in p else self.now)
        except ValueError as exc:
            return 400, {"status": "error", "errorType": "bad_data", "error": str(exc)}

    # -- evaluation ------------------------------------------------------------------------

    def _eval(self, q: str, t: float) -> list[tuple[dict, float]]:
        m = _Q.match(q)
        if not m:
            raise ValueError(f"fake Prometheus does not understand {q!r}")
        by, fn, name, sel, window, or_zero = m.groups()
        matchers = [(k, op, v.replace("\\\\", "\\")) for k, op, v in _SEL.findall(sel)]
        if fn is None:  # a gauge: healthy replicas of a deployment
            dep = next(v for k, _, v in matchers if k == "deployment")
            return [({}, float(self.replicas[dep]))] if dep in self.replicas else []
        w = float(window)
        groups: dict[tuple, float] = {}
        base, suffix = name, ""
        for s in ("_bucket", "_sum", "_count"):
            if name.endswith(s):
                base, suffix = name[: -len(s)], s
        shadow = base.startswith("ray_corral_shadow_")
        base = base.replace("ray_corral_shadow_", "ray_corral_")
        events = self.feedback if base == "ray_corral_feedback_score" else \
            [e for e in self.requests if e.shadow == shadow]
        for e in events:
            if not t - w < e.t <= t:
                continue
            labels = {"route": e.route, "arm": e.arm, "status": str(getattr(e, "status", ""))}
            if not all((re.fullmatch(v, labels.get(k, "")) if op == "=~" else labels.get(k) == v)
                       for k, op, v in matchers):
                continue
            if base == "ray_corral_requests_total":
                self._add(groups, by, labels, None, 1.0)
            elif base == "ray_corral_input_tokens_total":
                self._add(groups, by, labels, None, e.input_tokens)
            elif base == "ray_corral_output_tokens_total":
                self._add(groups, by, labels, None, e.output_tokens)
            elif base in BUCKETS:
                value = getattr(e, FIELD[base])
                if suffix == "_bucket":
                    for le in BUCKETS[base] + [math.inf]:
                        if value <= le:
                            self._add(groups, "le", {**labels, "le": "+Inf" if math.isinf(le) else repr(le)}, None, 1.0)
                        else:
                            self._add(groups, "le", {**labels, "le": "+Inf" if math.isinf(le) else repr(le)}, None, 0.0)
                elif suffix == "_sum":
                    self._add(groups, by, labels, None, value)
                else:
                    self._add(groups, by, labels, None, 1.0)
            else:
                raise ValueError(f"fake Prometheus has no series {name}")
        if fn == "rate":
            groups = {k: v / w for k, v in groups.items()}
        out = [(dict(k), v) for k, v in groups.items()]
        if not out and or_zero:
            out = [({}, 0.0)]
        return out

    @staticmethod
    def _add(groups, by, labels, _unused, v):
        key = ((by, labels[by]),) if by else ()
        groups[key] = groups.get(key, 0.0) + v

    def instant(self, q: str, t: float) -> dict:
        res = [{"metric": m, "value": [t, repr(v)]} for m, v in self._eval(q, t)]
        return {"status": "success", "data": {"resultType": "vector", "result": res}}

    def range(self, q: str, start: float, end: float, step: float) -> dict:
        series: dict[tuple, list] = {}
        n = int(math.floor((end - start) / step + 1e-9))
        for i in range(n + 1):
            t = start + i * step
            for m, v in self._eval(q, t):
                series.setdefault(tuple(sorted(m.items())), []).append([t, repr(v)])
        res = [{"metric": dict(k), "values": v} for k, v in series.items()]
        return {"status": "success", "data": {"resultType": "matrix", "result": res}}
