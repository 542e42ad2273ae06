"""Model and GPU catalogs for `corral plan cluster`.

Model entries are the exact architectures from each checkpoint's published `config.json`
(meta-llama/* on Hugging Face; the served checkpoint is the chat / instruct one, which shares its
base model's architecture); parameter counts are derived from them, not typed in, so a test can
compare the derived figure with the published one (e.g. Llama 3 70B: 70.55 B parameters,
141.1 GB in bf16).

GPU entries are vendor datasheet figures: memory as `nvidia-smi` reports the total (MiB),
memory bandwidth and dense (no sparsity) bf16 tensor throughput. The hourly prices are
rough on-demand cloud list prices per GPU, only a default: pass your own price to the planner
(`gpu_hourly_usd`, or `cluster.gpu_hourly_usd` in a fleet spec).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
GB = 1000**3
KiB = 1024

# Bytes per element of the weight / KV-cache dtypes the planner accepts.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "fp8": 1}


@dataclass(frozen=True)
class ModelArch:
    """A decoder-only Llama architecture (fields named as in the HF config.json)."""

    name: str
    hf_id: str
    """The checkpoint served: the chat / instruct model (the endpoint is a chat API; Llama 2 base
    checkpoints have no chat template). Its config.json has the same architecture as the base."""
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    published_params_b: float = 0.0
    """Parameter count the model card states, in billions (for cross-checking only)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer: attention (q, k, v, o), SwiGLU MLP, two RMSNorms."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attention = h * h + 2 * h * kv + h * h
        mlp = 3 * h * self.intermediate_size
        return attention + mlp + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """Final norm + LM head (the head shares the embedding when tied)."""
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return lm_head + self.hidden_size

    @property
    def num_params(self) -> int:
        return self.embedding_params + self.num_hidden_layers * self.layer_params + self.head_params

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.num_params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V for every layer: 2 · layers · KV heads · head_dim · bytes."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class GpuType:
    """One GPU model: datasheet figures plus how Kubernetes and Ray name it."""

    name: str
    memory_mib: int
    """Total memory as nvidia-smi reports it."""
    bandwidth_gb_s: float
    """Peak memory bandwidth, GB/s (decimal)."""
    bf16_tflops: float
    """Dense bf16 tensor-core throughput, TFLOPS."""
    hourly_usd: float
    """Default price of one GPU hour (rough on-demand list price; override it)."""
    nvlink: bool
    """GPUs in a node talk over NVLink/NVSwitch (False: PCIe only, tensor parallel is slower)."""
    k8s_product: str
    """Value of the `nvidia.com/gpu.product` node label set by NVIDIA GPU feature discovery."""
    nvml_name: str
    """The device name NVML reports (`nvidia-smi --query-gpu=name`), from which Ray derives the type."""
    ray_accelerator_type: str
    """The `accelerator_type:<X>` resource Ray puts on a node with this GPU. Ray derives it from
    the NVML name (ray/_private/accelerators/nvidia_gpu.py, NVIDIA_GPU_NAME_PATTERN and
    `NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type`): memory and form factor are
    dropped ("NVIDIA A100-SXM4-80GB" -> "A100"), so the 40 and 80 GB A100 share one type and the
    Kubernetes node selector (`k8s_product`) is what tells them apart."""

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024**2

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


MODELS: dict[str, ModelArch] = {
    m.name: m
    for m in (
        ModelArch("llama-2-7b", "meta-llama/Llama-2-7b-chat-hf", 32, 4096, 32, 32, 11008, 32000, 4096,
                  published_params_b=6.74),
        ModelArch("llama-2-13b", "meta-llama/Llama-2-13b-chat-hf", 40, 5120, 40, 40, 13824, 32000, 4096,
                  published_params_b=13.02),
        ModelArch("llama-2-70b", "meta-llama/Llama-2-70b-chat-hf", 80, 8192, 64, 8, 28672, 32000, 4096,
                  published_params_b=68.98),
        ModelArch("llama-3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", 32, 4096, 32, 8, 14336, 128256, 8192,
                  published_params_b=8.03),
        ModelArch("llama-3-70b", "meta-llama/Meta-Llama-3-70B-Instruct", 80, 8192, 64, 8, 28672, 128256, 8192,
                  published_params_b=70.55),
        ModelArch("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 32, 8, 14336, 128256, 131072,
                  published_params_b=8.03),
        ModelArch("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 80, 8192, 64, 8, 28672, 128256, 131072,
                  published_params_b=70.55),
    )
}

GPUS: dict[str, GpuType] = {
    g.name: g
    for g in (
        GpuType("A100-40GB", 40960, 1555, 312, 3.00, True, "NVIDIA-A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", "A100"),
        GpuType("A100-80GB", 81920, 2039, 312, 4.00, True, "NVIDIA-A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "A100"),
        GpuType("H100-80GB", 81559, 3350, 989, 6.00, True, "NVIDIA-H100-80GB-HBM3", "NVIDIA H100 80GB HBM3", "H100"),
        GpuType("H200-141GB", 143771, 4800, 989, 8.00, True, "NVIDIA-H200", "NVIDIA H200", "H200"),
        GpuType("L40S", 46068, 864, 362, 1.80, False, "NVIDIA-L40S", "NVIDIA L40S", "L40S"),
        GpuType("A10G", 23028, 600, 70, 1.20, False, "NVIDIA-A10G", "NVIDIA A10G", "A10G"),
    )
}


class CatalogError(ValueError):
    """An unknown model or GPU name; the message lists the known ones."""


def _lookup(table: dict, name: str, what: str):
    key = name.strip().lower()
    for known, entry in table.items():
        if known.lower() == key:
            return entry
    raise CatalogError(f"unknown {what} {name!r}; known: {', '.join(table)}")


def model(name: str) -> ModelArch:
    """Look a model up by catalog name (case-insensitive)."""
    return _lookup(MODELS, name, "model")


def gpu(name: str) -> GpuType:
    """Look a GPU up by catalog name (case-insensitive)."""
    return _lookup(GPUS, name, "GPU type")
