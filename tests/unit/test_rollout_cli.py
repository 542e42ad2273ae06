"""CLI: commands go through the store; status/history render; ab report prints a table."""

import json

from corral.cli import main
from corral.cluster.spec.rollout import RolloutSpec
from corral.rollout.controller import start_rollout
from corral.rollout.store import FileStore


def test_rollout_commands_queue_in_store(tmp_path, capsys):
    store_path = tmp_path / "r.json"
    spec = RolloutSpec(route="llama", baseline="smollm2-135m", candidate="other")
    start_rollout(FileStore(store_path), spec, 1.0)
    assert main(["rollout", "pause", "--store", str(store_path), "--reason", "look"]) == 0
    assert main(["rollout", "promote", "--full", "--store", str(store_path)]) == 0
    cmds = FileStore(store_path).load().commands
    assert [(c.op, c.full, c.reason) for c in cmds] == [("pause", False, "look"), ("promote", True, "")]
    assert main(["rollout", "status", "--store", str(store_path)]) == 0
    assert main(["rollout", "history", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "Pending" in out and "create" in out


def test_rollout_status_without_rollout_is_bad_input(tmp_path, capsys):
    assert main(["rollout", "status", "--store", str(tmp_path / "none.json")]) == 2
    assert "no rollout found" in capsys.readouterr().err


def test_ab_report_cli(tmp_path, capsys):
    recs = tmp_path / "recs.jsonl"
    lines = [{"arm": "a", "status": 200, "latency_s": 1.0 + i / 100, "output_tokens": 10, "t": i} for i in range(50)]
    lines += [{"arm": "b", "status": 200, "latency_s": 2.0 + i / 100, "output_tokens": 10, "t": i} for i in range(50)]
    recs.write_text("\n".join(json.dumps(r) for r in lines))
    assert main(["ab", "report", "--records", str(recs), "--baseline", "a", "--candidate", "b"]) == 0
    out = capsys.readouterr().out
    assert "latency_mean_s" in out and "welch-t" in out and "*" in out
