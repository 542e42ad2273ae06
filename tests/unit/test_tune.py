"""`corral tune`: validates before writing, names the problem, leaves a bad change unwritten."""

from __future__ import annotations

import pytest
import yaml

from corral.commands._common import CliError
from corral.commands.tune import set_max_num_seqs

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
    with pytest.raises(CliError) as exc:
        set_max_num_seqs(path, arm, value)
    assert needle in str(exc.value) and exc.value.code == 2
    assert path.read_text() == before
