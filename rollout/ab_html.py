"""The A/B report as one self-contained HTML file with plots (matplotlib, PNGs inlined as base64).

Plots: per-arm TTFT / ITL / latency distributions from the histogram buckets (share of requests
per bucket, log-spaced axis), each arm's share of the route's requests and its 5xx rate over
time with the rollout's weight changes marked, satisfaction and golden-set accuracy with their
intervals, and cost per 1M output tokens.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Sequence

from corral.rollout.ab import Row, render_rows
from corral.rollout.ab_prometheus import TIMED, ArmData, TimeSeries

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _distributions(data: dict[str, ArmData]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, h in zip(axes, TIMED):
        for color, (arm, d) in zip(COLORS, data.items()):
            bs = [(le, c) for le, c in d.histograms.get(h, []) if math.isfinite(le)]
            total = d.histograms.get(h, [(0, 0)])[-1][1] if d.histograms.get(h) else 0
            if not bs or total <= 0:
                continue
            edges, shares, prev = [], [], 0.0
            for le, c in bs:
                edges.append(le)
                shares.append((c - prev) / total)
                prev = c
            ax.step(edges, shares, where="pre", color=color, label=f"{arm} (n={total:.0f})")
        ax.set_xscale("log")
        ax.set_title(f"{h} distribution (share per bucket)")
        ax.set_xlabel("seconds (bucket upper edge)")
        ax.legend(fontsize=8)
    return fig


def _over_time(ts: TimeSeries, events: list[tuple[float, str]], t0: float):
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 3.8))
    xs = [(t - t0) / 60 for t in ts.t]
    total = [sum(ts.rps[a][i] for a in ts.rps) for i in range(len(ts.t))]
    for color, arm in zip(COLORS, sorted(ts.rps)):
        share = [100 * r / tot if tot > 0 else float("nan") for r, tot in zip(ts.rps[arm], total)]
        a1.plot(xs, share, color=color, label=arm)
        err = ts.errors_rps.get(arm, [0.0] * len(xs))
        a2.plot(xs, [100 * e / r if r > 0 else float("nan") for e, r in zip(err, ts.rps[arm])], color=color, label=arm)
    for ax in (a1, a2):
        for at, label in events:
            ax.axvline((at - t0) / 60, color="grey", ls=":", lw=1)
            ax.text((at - t0) / 60, ax.get_ylim()[1], label, fontsize=7, rotation=90, va="top")
        ax.set_xlabel("minutes since --since")
        ax.legend(fontsize=8)
    a1.set_title("share of the route's requests (%) = weight in effect")
    a2.set_title("5xx error rate (%)")
    return fig


def _bars(rows: list[Row], metrics: list[str], arms: list[str], title: str, ylabel: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        for i, m in enumerate(metrics):
            row = next((r for r in rows if r.metric == m), None)
            e = row.estimates.get(arm) if row else None
            if e is None or e.value is None:
                continue
            err = None
            if e.low is not None and e.high is not None:
                err = [[e.value - e.low], [e.high - e.value]]
            ax.bar(i + j * width, e.value, width, yerr=err, color=COLORS[j % len(COLORS)], capsize=4,
                   label=arm if i == 0 else None)
    ax.set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig


def render_html(rows: list[Row], data: dict[str, ArmData], ts: TimeSeries | None, baseline: str, candidate: str,
                route: str, since: float, until: float, events: Sequence[tuple[float, str]] = (),
                extra_lines: Sequence[str] = ()) -> str:
    import matplotlib

    matplotlib.use("Agg")
    arms = [baseline, candidate] + [a for a in data if a not in (baseline, candidate)]
    figs = [("Latency distributions", _distributions(data))]
    if ts is not None and ts.t:
        figs.append(("Traffic share and errors over time", _over_time(ts, list(events), since)))
    figs.append(("Satisfaction and golden-set accuracy (95% intervals)",
                 _bars(rows, ["satisfaction_pass_rate", "golden_accuracy"], arms, "quality", "share")))
    figs.append(("Cost", _bars(rows, ["cost_per_1m_output_tokens_usd"], arms, "cost per 1M output tokens", "USD")))
    head = ["metric", f"{baseline} (baseline)", f"{candidate} (candidate)", "test", "note"]
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in render_rows(rows, baseline, candidate))
    when = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(since))} to {time.strftime('%H:%M:%S UTC', time.gmtime(until))}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>corral A/B report</title>",
        "<style>body{font-family:sans-serif;margin:20px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
        f"<h1>A/B report: route {html.escape(route)}</h1>",
        f"<p>{html.escape(baseline)} (baseline) vs {html.escape(candidate)} (candidate), {when}. "
        "Intervals are 95%; * marks p &lt; 0.05. Quantiles come from histogram buckets and carry the bucket's "
        "width as error beyond the interval (the note names the bucket).</p>",
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + table + "</table>",
    ]
    parts += [f"<p>{html.escape(line)}</p>" for line in extra_lines]
    for title, fig in figs:
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{_png(fig)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
