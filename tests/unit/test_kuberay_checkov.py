"""checkov on the rendered chart (default values and every example): zero failed checks.

checkov lives in its own virtualenv (.tools/checkov-venv, created by scripts/setup.sh through
scripts/chart-checks.sh --install-only). It runs offline (--skip-download)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from test_helm_chart import CASES, run_helm
from test_helm_chart import CHART as CHART_DIR

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"


def test_checkov_finds_nothing_on_any_render(tmp_path):
    assert CHECKOV.exists(), f"{CHECKOV} missing: scripts/setup.sh creates it (scripts/chart-checks.sh --install-only)"
    for case, values in CASES.items():
        out = run_helm("template", "corral", str(CHART_DIR), "--namespace", "corral", values=values).stdout
        (tmp_path / f"{case}.yaml").write_text(out)
    proc = subprocess.run([str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download",
                           "--quiet", "-o", "json"], capture_output=True, text=True, timeout=600)
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = reports[0]["summary"]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"].get("failed_checks", [])]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] > 100 and summary["skipped"] > 0
