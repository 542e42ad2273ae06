"""Results of a load test: requests.jsonl, summary.json and report.html (plots embedded).

`summarize_stage` and `summarize` are pure functions of the records; `write_results` does the
file I/O; matplotlib is imported only to draw the HTML report. The summary is what
`corral plan capacity` reads (together with requests.jsonl).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from corral.loadtests.metrics import RequestRecord, describe, realised_rate
from corral.loadtests.slo import SloClause, evaluate, format_slo, parse_slo

SUMMARY_VERSION = 1


def _metric_block(records: list[RequestRecord], clauses: list[SloClause]) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "ttft_s": describe([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": describe([x for r in ok for x in r.itl_s]),
        "tpot_s": describe([r.tpot_s for r in ok if r.tpot_s is not None]),
        "e2e_s": describe([r.e2e_s for r in ok if r.e2e_s is not None]),
        "input_tokens_mean": _mean([r.input_tokens for r in ok if r.input_tokens is not None]),
        "output_tokens_mean": _mean([r.output_tokens for r in ok if r.output_tokens is not None]),
        "slo": evaluate(clauses, records) if clauses else None,
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_stage(name: str, records: list[RequestRecord], duration_s: float, rate_rps: float | None,
                    clauses: list[SloClause], max_lag_s: float, concurrency: int | None = None,
                    started_unix: float | None = None) -> dict[str, Any]:
    """Summary of one stage's measured (non-warm-up) requests."""
    measured = [r for r in records if r.phase == "measure"]
    ok = [r for r in measured if r.ok]
    block = _metric_block(measured, clauses)
    lags = [r.lag_s for r in measured if r.lag_s is not None]
    lag = describe(lags)
    late = sum(1 for x in lags if x > max_lag_s)
    arms = sorted({r.arm or "?" for r in measured})
    out = {
        "name": name,
        "offered_rate_rps": rate_rps,
        "realised_rate_rps": realised_rate(measured, duration_s),
        "concurrency": concurrency,
        "duration_s": duration_s,
        "started_unix": started_unix,
        "warmup_requests": len(records) - len(measured),
        **block,
        "error_rate": block["errors"] / len(measured) if measured else None,
        "throughput_rps": len(ok) / duration_s,
        "output_tokens_per_s": sum(r.output_tokens or 0 for r in ok) / duration_s,
        # Little's law: mean requests in flight = arrival rate x mean time in system.
        "in_flight_mean": sum(r.e2e_s or 0 for r in ok) / duration_s,
        "lag_s": lag,
        "late_requests": late,
        "generator_behind": bool(lags) and (lag["p99"] or 0) > max_lag_s,
        "chunks_carry_several_tokens": any(
            r.output_tokens and r.content_events and r.output_tokens > r.content_events + 1 for r in ok),
        "arms": {a: _metric_block([r for r in measured if (r.arm or "?") == a], clauses) for a in arms}
        if len(arms) > 1 else {},
    }
    return out


def summarize(run: dict[str, Any], stage_records: list[tuple[dict[str, Any], list[RequestRecord]]],
              slo: str | None, max_lag_s: float) -> dict[str, Any]:
    """Whole-run summary. `run` carries config/calibration/metadata; stage_records pairs each
    stage's description (name, duration_s, rate_rps, concurrency) with its records."""
    clauses = parse_slo(slo) if slo else []
    stage_summaries = [
        summarize_stage(meta["name"], recs, meta["duration_s"], meta.get("rate_rps"), clauses, max_lag_s,
                        meta.get("concurrency"), meta.get("started_unix"))
        for meta, recs in stage_records
    ]
    met = [s for s in stage_summaries if s["slo"] and s["slo"]["met"] and s["offered_rate_rps"]
           and s["realised_rate_rps"]]
    return {
        "version": SUMMARY_VERSION,
        **run,
        "slo": format_slo(clauses) if clauses else None,
        "stages": stage_summaries,
        "highest_rate_meeting_slo_rps": max((s["realised_rate_rps"] for s in met), default=None),
        "warnings": [f"stage {s['name']}: load generator fell behind its schedule (p99 send lag "
                     f"{s['lag_s']['p99']:.3f}s > {max_lag_s:g}s, {s['late_requests']} late requests); "
                     "its latencies understate the offered load" for s in stage_summaries if s["generator_behind"]]
        + [f"stage {s['name']}: {s['errors']} of {s['requests']} requests failed"
           for s in stage_summaries if s["errors"]]
        + [w for s in stage_summaries for w in _small_sample_warnings(s, clauses)],
    }


def _small_sample_warnings(stage: dict[str, Any], clauses: list[SloClause]) -> list[str]:
    """A p95 verdict over 16 requests flips on a single slow one: say so."""
    out = []
    n = stage["requests"]
    for c in clauses:
        tail = 1 - c.quantile_pct / 100
        needed = math.ceil(3 / tail) if tail > 0 else 0
        if n and n < needed:
            out.append(f"stage {stage['name']}: {n} measured requests; its {c.key} verdict turns on "
                       f"{math.floor(n * tail) + 1} slow request(s) (>= {needed} requests for a stable verdict)")
    return out


def read_records(path: str | Path) -> list[RequestRecord]:
    out = []
    with Path(path).open() as f:
        for line in f:
            if line.strip():
                out.append(RequestRecord.from_dict(json.loads(line)))
    return out


def write_results(out_dir: str | Path, summary: dict[str, Any], records: list[RequestRecord]) -> dict[str, Path]:
    """Write requests.jsonl, summary.json and report.html into out_dir."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"requests": d / "requests.jsonl", "summary": d / "summary.json", "report": d / "report.html"}
    with paths["requests"].open("w") as f:
        for r in records:
            f.write(r.to_json() + "\n")
    paths["summary"].write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    paths["report"].write_text(render_html(summary, records))
    return paths


def _json_default(o: Any) -> Any:
    if o == float("inf"):
        return None
    raise TypeError(f"cannot serialize {type(o).__name__}")


# -------------------------------------------------------------------------------- HTML


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(summary: dict[str, Any], records: list[RequestRecord]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    stages = summary["stages"]
    measured = [r for r in records if r.phase == "measure" and r.ok]

    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [s["throughput_rps"] for s in stages]
    for key, label in (("ttft_s", "TTFT"), ("e2e_s", "end-to-end")):
        for q, style in (("p50", "o-"), ("p95", "s--")):
            ax.plot(xs, [s[key][q] for s in stages], style, label=f"{label} {q}")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (s)")
    ax.set_title("Latency vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.append(("Latency vs throughput", _png(fig)))
    plt.close(fig)

    for metric, title in (("ttft_s", "TTFT distribution"), ("itl_s", "Inter-token latency distribution")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name in dict.fromkeys(r.stage for r in measured):
            if metric == "itl_s":
                vals = [x for r in measured if r.stage == name for x in r.itl_s]
            else:
                vals = [r.ttft_s for r in measured if r.stage == name and r.ttft_s is not None]
            if vals:
                vals.sort()
                ax.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))], label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction of samples ≤ x (CDF)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(stages) <= 12:
            ax.legend(fontsize=7)
        out.append((title, _png(fig)))
        plt.close(fig)

    rated = sorted((s for s in stages if s["slo"] and s["offered_rate_rps"] is not None
                    and s.get("realised_rate_rps") is not None), key=lambda s: s["realised_rate_rps"])
    if rated:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for key in rated[0]["slo"]["clauses"]:
            ax.plot([s["realised_rate_rps"] for s in rated],
                    [s["slo"]["clauses"][key]["attainment"] for s in rated], "o-", label=key)
            ax.axhline(rated[0]["slo"]["clauses"][key]["target"], ls=":", color="grey")
        ax.set_xlabel("realised rate (requests/s)")
        ax.set_ylabel("SLO attainment (fraction within threshold)")
        ax.set_title("SLO attainment vs rate")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("SLO attainment vs rate", _png(fig)))
        plt.close(fig)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def render_html(summary: dict[str, Any], records: list[RequestRecord]) -> str:
    cols = [("stage", lambda s: s["name"]), ("offered rps", lambda s: s["offered_rate_rps"]),
            ("realised rps", lambda s: s.get("realised_rate_rps")),
            ("users", lambda s: s["concurrency"]), ("requests", lambda s: s["requests"]),
            ("errors", lambda s: s["errors"]), ("throughput rps", lambda s: s["throughput_rps"]),
            ("out tok/s", lambda s: s["output_tokens_per_s"]), ("in flight", lambda s: s["in_flight_mean"]),
            ("TTFT p50", lambda s: s["ttft_s"]["p50"]), ("TTFT p95", lambda s: s["ttft_s"]["p95"]),
            ("ITL p50", lambda s: s["itl_s"]["p50"]), ("ITL p95", lambda s: s["itl_s"]["p95"]),
            ("TPOT p50", lambda s: s["tpot_s"]["p50"]), ("e2e p95", lambda s: s["e2e_s"]["p95"]),
            ("lag p99", lambda s: s["lag_s"]["p99"]),
            ("SLO", lambda s: None if not s["slo"] else ("met" if s["slo"]["met"] else "missed"))]
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(f(s))}</td>" for _, f in cols) + "</tr>" for s in summary["stages"])
    table = f"<table><tr>{''.join(f'<th>{c}</th>' for c, _ in cols)}</tr>{rows}</table>"
    arm_rows = []
    for s in summary["stages"]:
        for arm, a in s["arms"].items():
            arm_rows.append(f"<tr><td>{_fmt(s['name'])}</td><td>{_fmt(arm)}</td><td>{a['requests']}</td>"
                            f"<td>{a['errors']}</td><td>{_fmt(a['ttft_s']['p50'])}</td><td>{_fmt(a['ttft_s']['p95'])}</td>"
                            f"<td>{_fmt(a['itl_s']['p95'])}</td><td>{_fmt(a['tpot_s']['p50'])}</td>"
                            f"<td>{_fmt(None if not a['slo'] else a['slo']['met'])}</td></tr>")
    arms = ("<h2>Per-arm breakdown</h2><table><tr><th>stage</th><th>arm</th><th>requests</th><th>errors</th>"
            "<th>TTFT p50</th><th>TTFT p95</th><th>ITL p95</th><th>TPOT p50</th><th>SLO met</th></tr>"
            + "".join(arm_rows) + "</table>") if arm_rows else ""
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in summary.get("warnings", []))
    plots = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'/>" for t, b in _plots(summary, records))
    cfg = summary.get("config", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>corral load test</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}.warn{{color:#a00}}</style></head><body>
<h1>corral load test: {html.escape(str(cfg.get('model', '')))} at {html.escape(str(cfg.get('base_url', '')))}</h1>
<p>mode {html.escape(str(cfg.get('mode')))}; SLO {html.escape(str(summary.get('slo')))};
highest rate meeting the SLO: {_fmt(summary.get('highest_rate_meeting_slo_rps'))} rps.
{html.escape(summary.get('stopped') or '')}</p>
{f'<ul class="warn">{warnings}</ul>' if warnings else ''}
<h2>Stages (warm-up excluded; seconds)</h2>{table}{arms}{plots}
<p>Metric definitions: loadtests/METRICS.md. Per-request data: requests.jsonl.</p></body></html>
"""
