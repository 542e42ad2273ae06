"""Fit the capacity planner to a `corral loadtest` results folder (the I/O beside the pure
`capacity.py`): read summary.json and requests.jsonl, pick the arm, split its stages, fit.

Raises `PlanningInputError` naming the input at fault (`field`: slo, results, arm, replicas);
`corral plan capacity` and the benchmarks turn it into their own messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.common.engine_model import IterationRecord, iteration_record
from corral.loadtests.capacity import Measured, Planner
from corral.loadtests.report import read_records
from corral.loadtests.slo import parse_slo

ITERATIONS_FILE = "engine-iterations.jsonl"
"""Per-iteration engine records beside requests.jsonl, when the load test collected them: one
JSON object per line with vLLM's `SchedulerIterationDetails` fields (see `serving/llm_server.py`,
`IterationLog`). The planner fits its step model from them instead of client timings."""


def read_iterations(path: Path) -> list[IterationRecord] | None:
    """The records of an engine-iterations file (None when there is none)."""
    if not path.exists():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise PlanningInputError("results", f"cannot read {path} ({exc})") from None
    records = [r for r in (iteration_record(row) for row in rows) if r is not None]
    return records or None


class PlanningInputError(ValueError):
    """Bad input to the planner; `field` names it (slo, results, arm or replicas)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def load_planner(results: str | Path, slo: str, arm: str | None = None, replicas: int | None = None,
                 max_num_seqs: int | None = None,
                 devices_per_replica: int | None = None) -> tuple[Planner, dict[str, Any]]:
    """Read a results folder and fit the planner for `arm` (the only arm when None). Replicas,
    max_num_seqs and devices default to what the results recorded (`corral loadtest FLEET`).
    Returns the planner and the run's summary."""
    try:
        clauses = parse_slo(slo)
    except ValueError as exc:
        raise PlanningInputError("slo", str(exc)) from None
    d = Path(results)
    try:
        summary = json.loads((d / "summary.json").read_text())
        records = read_records(d / "requests.jsonl")
    except (OSError, ValueError) as exc:
        raise PlanningInputError("results", f"cannot read load-test results ({exc})") from None
    deployment = summary.get("deployment") or {}
    dep_arms = deployment.get("arms") or {}
    seen_arms = sorted({r.arm for r in records if r.arm})
    if arm is None:
        candidates = list(dep_arms) or seen_arms
        if len(candidates) != 1:
            raise PlanningInputError("arm", f"the results span arms {candidates}; name the one to plan")
        arm = candidates[0]
    info = dep_arms.get(arm, {})
    weight = info.get("weight", 100) / 100
    replicas = replicas or info.get("replicas")
    max_num_seqs = max_num_seqs or info.get("max_num_seqs")
    if replicas is None or max_num_seqs is None:
        raise PlanningInputError("replicas", "the results do not record the arm's deployment "
                                             "(run `corral loadtest FLEET ...`); give replicas and max_num_seqs")
    multi = len(seen_arms) > 1
    stages = []
    for s in summary.get("stages", []):
        recs = [r for r in records if r.stage == s["name"] and (not multi or r.arm == arm)]
        rate = s.get("offered_rate_rps")
        stages.append((s["name"], None if rate is None else rate * weight, s["duration_s"], recs))
    measured = Measured(arm, replicas, max_num_seqs, devices_per_replica or info.get("devices_per_replica", 1),
                        **{k: info[k] for k in ("max_num_batched_tokens", "max_ongoing_requests") if info.get(k)})
    try:
        return Planner.fit(measured, clauses, stages, read_iterations(d / ITERATIONS_FILE)), summary
    except ValueError as exc:
        raise PlanningInputError("results", str(exc)) from None
