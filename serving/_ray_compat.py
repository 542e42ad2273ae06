"""The one place corral touches Ray's private APIs (Ray 2.60.0).

Ray Serve LLM and Ray Serve keep some of what corral needs in private modules
(`ray.llm._internal…`, `ray._private…`) or private functions (`ray.serve.autoscaling_policy._…`).
These names move between Ray releases, so every such import and call goes through this module:
a Ray upgrade is a change to this file, and `tests/unit/test_ray_compat.py` names the symbol
that moved. Nothing here is imported until it is used, so importing this module costs nothing
(the autoscaler simulator runs without Ray installed).

It also holds the one private torch call corral makes (`torch_amx_tile_supported`): the check
vLLM's CPU attention decides its kernel with.

Private classes and constants are resolved on attribute access (`from corral.serving._ray_compat
import ChatCompletionRequest`); private functions are wrapped by functions of the same arguments.
"""

from __future__ import annotations

import contextvars
import importlib
from typing import Any

# The Ray release whose private shapes this module encodes (pyproject pins ray[serve]==2.60.0).
RAY_VERSION = "2.60.0"

_OPENAI_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
_INGRESS = "ray.llm._internal.serve.core.ingress.ingress"
_INGRESS_UTILS = "ray.llm._internal.serve.core.ingress.utils"
_POLICY = "ray.serve.autoscaling_policy"

# Public name here -> (private module, attribute) in Ray.
PRIVATE_NAMES: dict[str, tuple[str, str]] = {
    # OpenAI request/response models of Ray Serve LLM's ingress.
    "ChatCompletionRequest": (_OPENAI_MODELS, "ChatCompletionRequest"),
    "ChatCompletionResponse": (_OPENAI_MODELS, "ChatCompletionResponse"),
    "CompletionRequest": (_OPENAI_MODELS, "CompletionRequest"),
    "ModelCard": (_OPENAI_MODELS, "ModelCard"),
    "ModelList": (_OPENAI_MODELS, "ModelList"),
    "OpenAIHTTPException": (_OPENAI_MODELS, "OpenAIHTTPException"),
    # What an LLMServer yields first when it refuses or fails a request.
    "ErrorResponse": (_OPENAI_MODELS, "ErrorResponse"),
    # to_model_metadata(model_id, llm_config) -> ModelCard for /v1/models.
    "to_model_metadata": (_OPENAI_MODELS, "to_model_metadata"),
    # The stock ingress's endpoint map (name -> lambda app: app.post(path)).
    "DEFAULT_ENDPOINTS": (_INGRESS, "DEFAULT_ENDPOINTS"),
    # init() -> the FastAPI app with Ray Serve LLM's middleware and error handlers.
    "ingress_fastapi_app": (_INGRESS, "init"),
    # The stock ingress's bound on a request up to its response object (s; 408 past it).
    "ROUTER_HTTP_TIMEOUT_S": (_INGRESS, "DEFAULT_LLM_ROUTER_HTTP_TIMEOUT"),
    # Response classes of a non-streamed answer (anything else is a stream).
    "NON_STREAMING_RESPONSE_TYPES": (_INGRESS_UTILS, "NON_STREAMING_RESPONSE_TYPES"),
    # One streamed item (a chunk or a list of chunks) -> its SSE text (`data: {...}\n\n`...).
    "apply_openai_json_format": (_INGRESS_UTILS, "_apply_openai_json_format"),
}


class RayCompatError(ImportError):
    """Ray no longer has a private symbol corral relies on (raised with the Ray version and the symbol)."""


def ray_version() -> str:
    try:
        import ray
    except ImportError:
        return "not installed"
    return str(getattr(ray, "__version__", "unknown"))


def _missing(symbol: str, exc: BaseException) -> RayCompatError:
    return RayCompatError(
        f"Ray {ray_version()} has no {symbol} (corral was written against Ray {RAY_VERSION}): {exc}. "
        "Update corral/serving/_ray_compat.py for this Ray release.")


def resolve(module: str, attr: str) -> Any:
    """`module.attr` from Ray, or RayCompatError naming the Ray version and the symbol."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise _missing(f"{module}.{attr}", exc) from exc


def __getattr__(name: str) -> Any:  # PEP 562: private classes and constants, resolved on first use
    if name in PRIVATE_NAMES:
        return resolve(*PRIVATE_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- Ray core

def available_resources_per_node() -> dict[str, dict[str, float]]:
    """Available (not total) resources of each live node of the connected Ray cluster, by node id.

    The public API has no per-node availability; this is what `ray status` reads
    (ray/_private/state.py `available_resources_per_node`)."""
    fn = resolve("ray._private.state", "available_resources_per_node")
    return dict(fn())


# ---------------------------------------------------------------- Ray metrics

def metric_recorder(metric: Any) -> Any:
    """`record(value, tags=...)` of a `ray.util.metrics` Counter, Histogram or Gauge, without the
    per-call checks of its public methods (value type and sign, tag value types, missing tag keys,
    the merge with default tags: `Metric._record` and `Counter.inc` in ray/util/metrics.py). For
    callers that pass a positive number and a complete dict of str tags validated once; a metric
    whose name Ray discarded records nothing, as there."""
    if getattr(metric, "_discard_metric", False):
        return lambda value, tags=None: None
    record = getattr(getattr(metric, "_metric", None), "record", None)
    if record is None:
        raise _missing("ray.util.metrics.Metric._metric.record", AttributeError("no such attribute"))
    return record


# ---------------------------------------------------------------- Ray Serve LLM ingress

# The calls to model deployments that the current task makes through an ingress whose class went
# through `cancellable_arm_calls` (None: not kept).
_ARM_CALLS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("corral_arm_calls", default=None)


class ArmCalls(list):
    """The handle calls to arms made in this task while it is entered (`with ArmCalls() as calls:`
    around `llm_responses`' first item), so that the ingress can cancel what it stops waiting for.

    Serve does not cancel a handle call whose awaiting was cancelled: ray/serve/handle.py
    `DeploymentResponseGenerator.__anext__` re-raises the CancelledError without `cancel()`. A request
    the ingress gave up on (its first-response timeout) would keep its place in the router's queue
    and run on the engine to its end, for nobody. `cancel()` calls `DeploymentResponseGenerator.cancel()`
    (handle.py `_DeploymentResponseBase.cancel`: not yet assigned to a replica -> dropped from the
    router's queue; assigned -> `ActorReplicaResult.cancel`, ray/serve/_private/replica_result.py,
    `ray.cancel` of the replica's generator, whose cancellation reaches vLLM's
    `AsyncLLM.generate`, vllm/v1/engine/async_llm.py, which aborts the request in the engine).

    On every request's path, so it is the list itself, and the handles are wrapped once each."""

    __slots__ = ("_token",)

    def __enter__(self) -> ArmCalls:
        self._token = _ARM_CALLS.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ARM_CALLS.reset(self._token)

    def cancel(self) -> int:
        """Cancel every call kept (best effort, as Serve's); returns how many."""
        calls = list(self)
        self.clear()
        for call in calls:
            call.cancel()
        return len(calls)


class _KeptHandle:
    """A model's DeploymentHandle whose `.remote()` calls go into the current `ArmCalls`."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def options(self, **kwargs: Any) -> _KeptHandle:
        return _KeptHandle(self._handle.options(**kwargs))

    def __getattr__(self, method: str) -> _KeptHandle:
        # `handle.chat`: the handle of that method. Serve makes a new one per access; one is
        # reusable, so it is kept as this object's attribute (found without this call next time).
        kept = _KeptHandle(getattr(self._handle, method))
        self.__dict__[method] = kept
        return kept

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        call = self._handle.remote(*args, **kwargs)
        kept = _ARM_CALLS.get()
        if kept is not None:
            kept.append(call)
        return call


def cancellable_arm_calls(cls: type) -> type:
    """Class decorator for an `OpenAiIngress` subclass: the handles its `_get_response` calls arms
    through (`_get_configured_serve_handle(model_id)`, ray/llm/_internal/serve/core/ingress/ingress.py,
    which caches them per model) keep their calls in the current `ArmCalls`."""
    configured = getattr(cls, "_get_configured_serve_handle", None)
    if configured is None:
        raise _missing("ray.serve.llm.ingress.OpenAiIngress._get_configured_serve_handle",
                       AttributeError("no such method"))

    def _get_configured_serve_handle(self: Any, model_id: str) -> _KeptHandle:
        kept_by_model = self.__dict__.get("_corral_kept_handles")
        if kept_by_model is None:
            kept_by_model = self.__dict__["_corral_kept_handles"] = {}
        kept = kept_by_model.get(model_id)
        if kept is None:
            kept = kept_by_model[model_id] = _KeptHandle(configured(self, model_id))
        return kept

    cls._get_configured_serve_handle = _get_configured_serve_handle  # type: ignore[attr-defined]
    return cls


def llm_responses(ingress: Any, body: Any, call_method: str, raw_request: Any = None) -> Any:
    """`OpenAiIngress._get_response(body=, call_method=, raw_request=)`: the async generator of what
    the model's LLMServer yields for a request (the stock `_process_llm_request` reads its first item,
    then answers with it or streams the rest; ray/llm/_internal/serve/core/ingress/ingress.py
    `OpenAiIngress._get_response`)."""
    method = getattr(ingress, "_get_response", None)
    if method is None:
        raise _missing("ray.serve.llm.ingress.OpenAiIngress._get_response", AttributeError("no such method"))
    return method(body=body, call_method=call_method, raw_request=raw_request)


async def process_llm_request(ingress: Any, body: Any, call_method: str, raw_request: Any = None) -> Any:
    """`OpenAiIngress._process_llm_request(body, call_method=, raw_request=)`: send a parsed OpenAI
    request to the model's LLMServer and turn the answer into a response, as the stock endpoints do
    (ray/llm/_internal/serve/core/ingress/ingress.py `OpenAiIngress._process_llm_request`). The
    shadow copies use it (serving/shadow.py reads the response's body); user requests go through
    `llm_responses`."""
    method = getattr(ingress, "_process_llm_request", None)
    if method is None:
        raise _missing("ray.serve.llm.ingress.OpenAiIngress._process_llm_request",
                       AttributeError("no such method"))
    return await method(body, call_method=call_method, raw_request=raw_request)


# ---------------------------------------------------------------- Ray Serve autoscaling (controller side)
# What Serve's controller applies around a custom policy's answer (ray/serve/autoscaling_policy.py
# `_apply_autoscaling_config`); the autoscaler simulator replays it with a simulated clock.

def cold_start_replicas(ctx: Any) -> int | None:
    """Replicas of Serve's cold-start fast path (0 replicas, requests waiting), else None
    (`_get_cold_start_scale_up_replicas(ctx)`)."""
    result: int | None = resolve(_POLICY, "_get_cold_start_scale_up_replicas")(ctx)
    return result


def internal_policy_state(policy_state: dict[str, Any]) -> dict[str, Any]:
    """Serve's own keys (delay counters, timestamps) of a policy state (`_extract_internal_policy_state`)."""
    result: dict[str, Any] = resolve(_POLICY, "_extract_internal_policy_state")(policy_state)
    return result


def apply_scaling_factors(desired_num_replicas: float, current_num_replicas: int, autoscaling_config: Any) -> int:
    """Desired replicas after upscaling_factor / downscaling_factor (`_apply_scaling_factors`)."""
    result: int = resolve(_POLICY, "_apply_scaling_factors")(desired_num_replicas, current_num_replicas,
                                                             autoscaling_config)
    return result


def apply_delay_logic(desired_num_replicas: int, curr_target_num_replicas: int, config: Any,
                      policy_state: dict[str, Any], _now: float | None = None) -> tuple[int, dict[str, Any]]:
    """Serve's upscale/downscale delays (`_apply_delay_logic`); `_now` replaces the wall clock."""
    result: tuple[int, dict[str, Any]] = resolve(_POLICY, "_apply_delay_logic")(
        desired_num_replicas, curr_target_num_replicas, config, policy_state, _now=_now)
    return result


def torch_amx_tile_supported(timeout_s: float = 120.0) -> bool | None:
    """Whether this machine lets torch use AMX tiles: `torch.cpu._is_amx_tile_supported()`, the
    check vLLM 0.32's CPU attention takes its AMX kernel on (vllm/v1/attention/backends/cpu_attn.py
    `_get_attn_isa`); it needs the CPU's tiles and the kernel's permission to use them. Asked in a
    child interpreter so that the caller does not import torch. None when torch cannot answer
    (not installed, the private function moved, no answer within `timeout_s`)."""
    import subprocess
    import sys

    code = "import torch; print(int(bool(torch.cpu._is_amx_tile_supported())))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    return answer[0] == "1" if answer and answer[0] in ("0", "1") else None
