"""Real-cluster check of corral's autoscaling policy: a time-compressed slice of the Azure trace
replayed against the local fleet, replicas over time against load, SLO attainment at the client.

What runs (all real: Ray Serve LLM + vLLM on CPU, corral's policy inside Serve's controller):

1. `corral up benchmarks/fleets/autoscale-live.yaml` (one SmolLM2 arm, 1-2 replicas).
2. Load level: `--replica-rps` is what one replica sustains within the SLO (λ* per replica
   from `corral plan capacity` on a sweep of the same model, lengths and core count, see
   benchmarks/capacity_accuracy.py). The trace is thinned so that its busiest minute asks for
   `--peak-replicas` (default 1.6) replicas' worth of that: one replica cannot hold the peak,
   two can, and the quiet stretches fit one. Token counts are scaled by `--token-scale` (the
   recorded prompts and answers are far too long for a 135M model on two CPU cores).
3. Replay: `corral loadtest --mode trace` (HTTP only, like any client) while a sampler reads
   the arm's target and running replicas from Serve's REST API every second.
4. Report: JSON on stdout (SLO attainment at the client, replica-seconds, scale events with
   the policy's reasons from the Serve controller log) and a plot in OUT_DIR.

    .venv/bin/python benchmarks/autoscaler_live.py OUT_DIR --replica-rps 0.8 [--trace-start 900] [--speedup 4] [--duration 600]

This is a check that the policy works in Serve on a live fleet, not a capacity benchmark: a
two-core machine gives the arm room for two single-thread replicas.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from corral.common.traces import DEFAULT_TRACE as TRACE

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "benchmarks" / "fleets" / "autoscale-live.yaml"
DECISION = re.compile(r"corral autoscaler: (?P<arm>\S+) (?P<op>scale_up|scale_down) (?P<old>\d+) -> (?P<new>\d+): (?P<why>.*)$")


class ReplicaSampler(threading.Thread):
    """Polls Serve's REST API for the arm's target and running replica counts."""

    def __init__(self, cluster, app: str, deployment: str, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.cluster, self.app, self.deployment, self.every_s = cluster, app, deployment, every_s
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                dep = ((self.cluster.app_status(self.app) or {}).get("deployments") or {}).get(self.deployment) or {}
                states = [r.get("state") for r in dep.get("replicas") or []]
                self.samples.append({"t": time.time(), "target": dep.get("target_num_replicas"),
                                     "running": states.count("RUNNING"),
                                     "starting": sum(s in ("STARTING", "PENDING_ALLOCATION") for s in states)})
            except Exception as exc:  # noqa: BLE001 - a missed sample is reported, not fatal
                self.samples.append({"t": time.time(), "error": str(exc)})
            self.stop.wait(self.every_s)


def loadtest(out: Path, *flags: str) -> dict:
    cmd = [sys.executable, "-m", "corral.cli", "loadtest", "--model", "llama", "--out", str(out), *flags]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"loadtest failed ({proc.returncode}): {' '.join(cmd)}")
    return json.loads((out / "summary.json").read_text())


def scale_events(since: float) -> list[dict]:
    """The policy's non-hold decisions, from the Serve controller log (written by the policy)."""
    events = []
    for path in glob.glob("/tmp/ray/session_latest/logs/serve/controller_*.log"):
        if "build" in os.path.basename(path):
            continue
        for line in Path(path).read_text(errors="replace").splitlines():
            m = DECISION.search(line)
            if not m:
                continue
            # Serve log lines start "INFO 2026-11-23 17:59:01,123 controller ...".
            stamp = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
            t = time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + int(stamp[2]) / 1000 if stamp else None
            if t is None or t >= since:
                events.append({"t": t, **m.groupdict()})
    return sorted(events, key=lambda e: e["t"] or 0)


def timeline(records: list[dict], samples: list[dict], t0: float, end_s: float, bin_s: float,
             ttft_slo: float, tpot_slo: float) -> list[dict]:
    """Per bin: offered requests/s, client-side in-flight, replicas, and SLO attainment."""
    rows = []
    for i in range(math.ceil(end_s / bin_s)):
        lo, hi = i * bin_s, (i + 1) * bin_s
        sent = [r for r in records if lo <= r["sent_s"] < hi]
        done = [r for r in sent if not r.get("error")]
        ok = [r for r in done if r["ttft_s"] is not None and r["ttft_s"] <= ttft_slo
              and (r["tpot_s"] is None or r["tpot_s"] <= tpot_slo)]
        # Mean requests in flight over the bin (client's view).
        in_flight = sum(max(0.0, min(hi, r["sent_s"] + (r["e2e_s"] or 0)) - max(lo, r["sent_s"]))
                        for r in records if r["sent_s"] < hi and r["sent_s"] + (r["e2e_s"] or 0) > lo) / bin_s
        snap = [s for s in samples if "error" not in s and lo <= s["t"] - t0 < hi]
        rows.append({
            "t_s": lo, "offered_rps": len(sent) / bin_s, "in_flight": round(in_flight, 3),
            "target_replicas": max((s["target"] or 0 for s in snap), default=None),
            "running_replicas": max((s["running"] for s in snap), default=None),
            "slo_attainment": len(ok) / len(sent) if sent else None, "errors": len(sent) - len(done),
        })
    return rows


def plot(rows: list[dict], events: list[dict], t0: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot(t, [r["offered_rps"] for r in rows], label="offered req/s")
    ax1.plot(t, [r["in_flight"] for r in rows], label="in flight (client)")
    ax1.set_ylabel("load")
    ax1.legend(loc="upper left")
    ax1.set_title(title)
    ax2.step(t, [r["target_replicas"] for r in rows], where="post", label="target replicas")
    ax2.step(t, [r["running_replicas"] for r in rows], where="post", label="running replicas")
    att = [r["slo_attainment"] for r in rows]
    ax3 = ax2.twinx()
    ax3.plot(t, att, color="grey", alpha=0.6, label="SLO attainment (bin)")
    ax3.set_ylim(0, 1.05)
    ax3.set_ylabel("SLO attainment")
    for e in events:
        if e["t"] is not None:
            ax2.axvline(e["t"] - t0, color="green" if e["op"] == "scale_up" else "red", ls=":", alpha=0.7)
    ax2.set_ylabel("replicas")
    ax2.set_xlabel("seconds since replay start")
    ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--trace-start", type=float, default=900.0, help="trace second to start at")
    ap.add_argument("--speedup", type=float, default=4.0, help="trace time compression")
    ap.add_argument("--duration", type=float, default=600.0, help="wall seconds of replay")
    ap.add_argument("--token-scale", type=float, default=0.05)
    ap.add_argument("--peak-replicas", type=float, default=1.6,
                    help="the busiest minute of the slice asks for this many replicas' worth of load")
    ap.add_argument("--replica-rps", type=float, required=True,
                    help="requests/s one replica sustains within the SLO (λ* per replica from corral plan capacity)")
    ap.add_argument("--keep", type=float, default=None, help="trace thinning (default: from --replica-rps)")
    ap.add_argument("--bin-s", type=float, default=10.0)
    ap.add_argument("--keep-fleet", action="store_true", help="leave the fleet running afterwards")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    from corral.cluster.spec import load_fleet
    from corral.loadtests.arrivals import load_trace
    from corral.serving.app import llm_deployment_name
    from corral.serving.fleet_ops import apply_fleet, stop_fleet
    from corral.serving.local import LocalCluster

    fleet = load_fleet(FLEET)
    arm = fleet.arms[0]
    spec = arm.autoscaling
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with contextlib.redirect_stdout(sys.stderr):
        stop_fleet()
    apply_fleet(str(FLEET), timeout_s=1200, prometheus=False, say=say)
    cluster = LocalCluster()
    rows = load_trace(TRACE)
    ctx_mean = sum(r.context_tokens for r in rows) / len(rows)
    gen_mean = sum(r.generated_tokens for r in rows) / len(rows)
    in_tok, out_tok = max(1, round(ctx_mean * args.token_scale)), max(2, round(gen_mean * args.token_scale))
    slo = f"ttft_p95={spec.ttft_p95_s:g},tpot_p95={spec.itl_p95_s:g}"
    per_replica_rps = args.replica_rps
    try:
        # Thin the trace so its busiest minute (compressed) asks for peak_replicas x one replica.
        window = [r.t_s for r in rows if args.trace_start <= r.t_s < args.trace_start + args.duration * args.speedup]
        per_min = [sum(1 for t in window if m <= t < m + 60) for m in range(int(args.trace_start), int(window[-1]), 60)]
        peak_rps = max(per_min) / 60 * args.speedup
        keep = args.keep or min(1.0, args.peak_replicas * per_replica_rps / peak_rps)
        say(f"one replica serves {per_replica_rps:.2f} req/s; trace peak {peak_rps:.1f} req/s -> keep {keep:.4f}")
        # Warm the engine (first requests are slow), then let the replicas' 20 s signal window
        # forget them, so the replay starts from a quiet fleet.
        loadtest(out / "warmup", "--mode", "closed", "--concurrency", "1", "--max-requests", "3",
                 "--duration", "120", "--warmup", "0", "--input-tokens", str(in_tok), "--output-tokens", str(out_tok))
        time.sleep(25)
        # Replay with the sampler running.
        sampler = ReplicaSampler(cluster, fleet.name, llm_deployment_name(arm.name))
        sampler.start()
        replay_started = time.time()
        summary = loadtest(out / "replay", "--mode", "trace", "--trace", str(TRACE),
                           "--trace-start", str(args.trace_start), "--speedup", str(args.speedup),
                           "--duration", str(args.duration), "--warmup", "0", "--trace-keep", f"{keep:.6f}",
                           "--token-scale", str(args.token_scale), "--slo", slo)
        time.sleep(2)
        sampler.stop.set()
        sampler.join()
    finally:
        if not args.keep_fleet:
            with contextlib.redirect_stdout(sys.stderr):
                stop_fleet()

    stage = summary["stages"][0]
    t0 = stage["started_unix"]
    records = [json.loads(line) for line in (out / "replay" / "requests.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("phase") == "measure"]
    events = scale_events(replay_started - 30)
    bins = timeline(records, sampler.samples, t0, args.duration, args.bin_s, spec.ttft_p95_s, spec.itl_p95_s)
    live = [s for s in sampler.samples if "error" not in s and t0 <= s["t"] <= t0 + args.duration]
    replica_s = sum((b["t"] - a["t"]) * (a["target"] or 0) for a, b in zip(live, live[1:]))
    met = [r for r in records if not r.get("error") and r["ttft_s"] is not None and r["ttft_s"] <= spec.ttft_p95_s
           and (r["tpot_s"] is None or r["tpot_s"] <= spec.itl_p95_s)]
    plot(bins, events, t0, out / "replicas_vs_load.png",
         f"corral policy on a live fleet: Azure conv trace from {args.trace_start:g}s, x{args.speedup:g}, keep {keep:.3f}")
    result = {
        "benchmark": "autoscaler_live",
        "fleet": str(FLEET.relative_to(ROOT)),
        "trace": {"start_s": args.trace_start, "speedup": args.speedup, "duration_s": args.duration, "keep": keep,
                  "token_scale": args.token_scale, "requests": len(records),
                  "mean_input_tokens": in_tok, "mean_output_tokens": out_tok},
        "per_replica_rps": per_replica_rps, "peak_replicas": args.peak_replicas,
        "autoscaling": spec.model_dump(),
        "slo": {"ttft_s": spec.ttft_p95_s, "tpot_s": spec.itl_p95_s},
        "client": {"requests": len(records), "errors": sum(1 for r in records if r.get("error")),
                   "slo_attainment": round(len(met) / len(records), 4) if records else None,
                   "ttft_p95_s": stage["ttft_s"]["p95"], "tpot_p95_s": stage["tpot_s"]["p95"],
                   "loadtest_slo": stage["slo"], "generator_behind": stage["generator_behind"]},
        "replicas": {"replica_seconds": round(replica_s, 1),
                     "max_target": max((s["target"] or 0 for s in live), default=None),
                     "min_target": min((s["target"] or 0 for s in live), default=None),
                     "missed_samples": sum(1 for s in sampler.samples if "error" in s)},
        "scale_events": [{**e, "t_s": round(e["t"] - t0, 1) if e["t"] else None} for e in events],
        "timeline": bins,
        "plot": str(out / "replicas_vs_load.png"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
