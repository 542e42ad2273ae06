"""Latency SLOs (`ttft_p95=0.5,itl_p95=50ms`) and their attainment over measured requests.

A clause `METRIC_pQ=THRESHOLD` holds for a set of requests when at least Q% of the metric's
samples are at or below THRESHOLD (equivalently: the Q-th percentile is within the threshold).
Its *attainment* is that fraction of samples. Failed requests count as one sample that misses,
so errors cannot make a stage look better. Metrics and samples are defined in METRICS.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from corral.loadtests.metrics import RequestRecord

METRICS = ("ttft", "itl", "tpot", "e2e")
_CLAUSE_RE = re.compile(r"^(?P<metric>[a-z0-9]+)_p(?P<q>\d+(?:\.\d+)?)$")
_VALUE_RE = re.compile(r"^(?P<num>\d+(?:\.\d+)?|\.\d+)(?P<unit>ms|s)?$")


@dataclass(frozen=True)
class SloClause:
    metric: str
    """One of ttft, itl, tpot, e2e."""
    quantile_pct: float
    """The percentile that must be within the threshold (95 for `_p95`)."""
    threshold_s: float
    """Latency bound in seconds."""

    @property
    def key(self) -> str:
        q = f"{self.quantile_pct:g}"
        return f"{self.metric}_p{q}"

    def samples(self, records: Iterable[RequestRecord]) -> list[float]:
        """The metric's samples; a failed request contributes one infinite sample."""
        out: list[float] = []
        for r in records:
            if not r.ok:
                out.append(float("inf"))
            elif self.metric == "itl":
                out.extend(r.itl_s)
            else:
                value = getattr(r, f"{self.metric}_s")
                # tpot is undefined for one-token answers: they cannot violate it.
                if value is not None:
                    out.append(value)
        return out

    def attainment(self, records: Iterable[RequestRecord]) -> float | None:
        xs = self.samples(records)
        if not xs:
            return None
        return sum(1 for x in xs if x <= self.threshold_s) / len(xs)

    def holds(self, records: Iterable[RequestRecord]) -> bool:
        a = self.attainment(records)
        return a is not None and a >= self.quantile_pct / 100


def parse_slo(text: str) -> list[SloClause]:
    """Parse `ttft_p95=0.5,itl_p95=50ms`. Seconds unless suffixed `ms`. Raises ValueError naming the bad part."""
    clauses: list[SloClause] = []
    if not text or not text.strip():
        raise ValueError("empty SLO; expected e.g. ttft_p95=0.5,itl_p95=0.05")
    for part in text.split(","):
        part = part.strip()
        if "=" not in part:
            raise ValueError(f"SLO clause {part!r} has no '='; expected METRIC_pQ=SECONDS, e.g. ttft_p95=0.5")
        name, value = (s.strip() for s in part.split("=", 1))
        m = _CLAUSE_RE.match(name)
        if not m or m["metric"] not in METRICS:
            raise ValueError(f"SLO clause {part!r}: {name!r} is not METRIC_pQ with METRIC in {list(METRICS)}")
        q = float(m["q"])
        if not 0 < q <= 100:
            raise ValueError(f"SLO clause {part!r}: percentile {q:g} is outside (0, 100]")
        v = _VALUE_RE.match(value)
        if not v:
            raise ValueError(f"SLO clause {part!r}: threshold {value!r} is not a positive number (seconds, or with 'ms')")
        threshold = float(v["num"]) / (1000 if v["unit"] == "ms" else 1)
        if threshold <= 0:
            raise ValueError(f"SLO clause {part!r}: threshold must be > 0")
        clause = SloClause(m["metric"], q, threshold)
        if any(c.key == clause.key for c in clauses):
            raise ValueError(f"SLO clause {clause.key!r} given twice")
        clauses.append(clause)
    return clauses


def format_slo(clauses: list[SloClause]) -> str:
    return ",".join(f"{c.key}={c.threshold_s:g}" for c in clauses)


def evaluate(clauses: list[SloClause], records: list[RequestRecord]) -> dict:
    """Attainment of each clause and whether all hold (`met`)."""
    per = {}
    for c in clauses:
        a = c.attainment(records)
        per[c.key] = {
            "threshold_s": c.threshold_s,
            "target": c.quantile_pct / 100,
            "attainment": a,
            "met": a is not None and a >= c.quantile_pct / 100,
        }
    # The normalized margin of the worst clause: >= 1 means every clause holds.
    ratios = [v["attainment"] / v["target"] for v in per.values() if v["attainment"] is not None]
    return {
        "clauses": per,
        "met": bool(per) and all(v["met"] for v in per.values()),
        "attainment_ratio": min(ratios) if len(ratios) == len(per) and ratios else None,
    }
