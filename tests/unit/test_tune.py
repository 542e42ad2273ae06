"""`corral tune` and the fleet-file editor behind it (cluster/spec/editor.py): validates before
writing, names the problem, leaves a bad change unwritten, replaces the file atomically."""

from __future__ import annotations

import pytest
import yaml

from corral.cli import main
from corral.cluster.spec import SpecError
from corral.cluster.spec.editor import merge_overlay, set_max_num_seqs

FLEET = {"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}, "engine": {"max_num_seqs": 16},
                   "autoscaling": {"target_ongoing_requests": 8}}]}


def test_tune_writes_valid_value(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(FLEET))
    assert set_max_num_seqs(path, "a", 32) == 16
    assert yaml.safe_load(path.read_text())["arms"][0]["engine"]["max_num_seqs"] == 32


@pytest.mark.parametrize("arm,value,needle", [("a", 0, "max_num_seqs"), ("b", 8, "no arm named 'b'"),
                                              ("a", 2, "target_ongoing_requests (8.0)")])
def test_tune_refuses_bad_values_and_keeps_file(tmp_path, arm, value, needle):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(FLEET))
    before = path.read_text()
    with pytest.raises(SpecError) as exc:
        set_max_num_seqs(path, arm, value)
    assert needle in str(exc.value)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.yaml"]  # no temporary file left behind


def test_cli_tune_bad_value_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(FLEET))
    assert main(["tune", "a", "--max-num-seqs", "2", str(path), "--no-apply"]) == 2
    err = capsys.readouterr().err
    assert "arms[a" in err and "target_ongoing_requests (8.0)" in err
    assert main(["tune", "a", "--max-num-seqs", "24", str(path), "--no-apply"]) == 0
    assert yaml.safe_load(path.read_text())["arms"][0]["engine"]["max_num_seqs"] == 24


def test_cli_keys_add_goes_through_the_editor(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text("# a comment the editor drops\n" + yaml.safe_dump(FLEET))
    assert main(["keys", "add", "alice", str(path), "--rpm", "60", "--enable"]) == 0
    key = capsys.readouterr().out.splitlines()[0]
    doc = yaml.safe_load(path.read_text())
    assert doc["auth"]["enabled"] is True and doc["auth"]["keys"][0]["requests_per_minute"] == 60
    assert key not in path.read_text() and "# a comment" not in path.read_text()  # as the help says
    before = path.read_text()
    assert main(["keys", "add", "bob", str(path), "--rpm", "0"]) == 2  # invalid: nothing written
    assert "requests_per_minute" in capsys.readouterr().err
    assert path.read_text() == before
    assert main(["keys", "list", str(path)]) == 0 and "alice" in capsys.readouterr().out


def test_editor_refuses_an_invalid_file_before_changing_it(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("arms: [ {name: a")  # not YAML
    with pytest.raises(SpecError, match="not valid YAML"):
        set_max_num_seqs(path, "a", 8)
    with pytest.raises(SpecError, match="cannot read"):
        set_max_num_seqs(tmp_path / "missing.yaml", "a", 8)


def test_merge_overlay_merges_arms_by_name():
    overlay = {"arms": [{"name": "a", "engine": {"max_num_seqs": 8}, "replicas": {"min": 1, "max": 3}}]}
    merged = merge_overlay(FLEET, overlay)
    arm = merged["arms"][0]
    assert arm["engine"] == {"max_num_seqs": 8} and arm["replicas"] == {"min": 1, "max": 3}
    assert FLEET["arms"][0]["engine"] == {"max_num_seqs": 16}  # the input is not modified
    with pytest.raises(ValueError, match="overlay arm 'z' is not in the fleet"):
        merge_overlay(FLEET, {"arms": [{"name": "z"}]})
