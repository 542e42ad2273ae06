"""A model directory without a complete, matching manifest is never served."""

import pytest

from corral.cluster.models import ModelError, verify, write_manifest


def test_manifest_detects_missing_and_changed_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    with pytest.raises(ModelError, match="no corral-manifest.json"):
        verify(tmp_path)  # e.g. preparation interrupted before the manifest
    write_manifest(tmp_path, {"name": "x", "recipe": 1})
    assert verify(tmp_path)["recipe"] == 1
    (tmp_path / "model.safetensors").write_bytes(b"\1" * 1000)  # same size, other bytes
    with pytest.raises(ModelError, match="does not match its checksum"):
        verify(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model.safetensors is missing"):
        verify(tmp_path)
