"""One test per shim of serving/_ray_compat.py: Ray's private shapes corral relies on.

Each test checks the private symbol's signature (inspect) and, where no running Ray is needed,
calls the shim on a tiny input. A failure names the Ray version and the symbol, so a Ray upgrade
that moves one of them reads as exactly that. Ray is imported (the module under test needs it),
never started.
"""

from __future__ import annotations

import inspect

import pytest

from corral.serving import _ray_compat as rc


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _expect(symbol: str, ok: bool, what: str) -> None:
    if not ok:
        pytest.fail(f"Ray {rc.ray_version()}: {symbol} changed shape ({what}); corral was written against "
                    f"Ray {rc.RAY_VERSION}: update corral/serving/_ray_compat.py")


def _private(name: str):
    module, attr = rc.PRIVATE_NAMES[name]
    try:
        return rc.resolve(module, attr)
    except rc.RayCompatError as exc:
        pytest.fail(str(exc))


def test_missing_symbol_names_ray_version_and_symbol():
    with pytest.raises(rc.RayCompatError, match=r"Ray \S+ has no ray\.serve\.nothing_here\.x .*Ray 2\.60\.0"):
        rc.resolve("ray.serve.nothing_here", "x")
    with pytest.raises(AttributeError):
        rc.__getattr__("not_a_compat_name")


@pytest.mark.parametrize("name", ["ChatCompletionRequest", "CompletionRequest", "ModelCard", "ModelList"])
def test_openai_models_are_pydantic_models(name):
    from pydantic import BaseModel

    cls = _private(name)
    _expect(f"{rc.PRIVATE_NAMES[name][0]}.{name}", inspect.isclass(cls) and issubclass(cls, BaseModel),
            "no longer a pydantic model")
    assert getattr(rc, name) is cls  # the module attribute resolves to the same class


def test_model_list_and_card_build():
    # As serving/ingress.py builds a route's card for /v1/models.
    card = _private("ModelCard")(id="m", object="model", owned_by="corral", permission=[],
                                 metadata={"route": True, "weights": {"a": 100}})
    listing = _private("ModelList")(data=[card])
    assert listing.data[0].id == "m"


def test_chat_request_parses_an_openai_body():
    req = _private("ChatCompletionRequest")(model="llama", messages=[{"role": "user", "content": "hi"}], user="u1")
    assert (req.model, req.user) == ("llama", "u1")
    creq = _private("CompletionRequest")(model="llama", prompt="hi", max_tokens=3)
    assert creq.max_tokens == 3


def test_openai_http_exception():
    exc_cls = _private("OpenAIHTTPException")
    _expect("OpenAIHTTPException", {"message", "status_code", "type"} <= set(_params(exc_cls.__init__)),
            f"__init__{inspect.signature(exc_cls.__init__)}")
    exc = exc_cls(message="nope", status_code=404, type="InvalidModel")
    assert exc.status_code == 404


def test_to_model_metadata_signature():
    fn = _private("to_model_metadata")
    _expect("to_model_metadata", _params(fn)[:2] == ["model_id", "model_config"], f"{inspect.signature(fn)}")


def test_default_endpoints_and_ingress_app():
    endpoints = _private("DEFAULT_ENDPOINTS")
    _expect("DEFAULT_ENDPOINTS", isinstance(endpoints, dict) and {"models", "completions", "chat"} <= set(endpoints),
            f"keys {sorted(endpoints) if isinstance(endpoints, dict) else type(endpoints)}")
    from fastapi import FastAPI

    app = rc.ingress_fastapi_app()
    assert isinstance(app, FastAPI)


def test_get_response_shape():
    from ray.serve.llm.ingress import OpenAiIngress

    method = getattr(OpenAiIngress, "_get_response", None)
    _expect("OpenAiIngress._get_response", method is not None, "missing")
    _expect("OpenAiIngress._get_response",
            inspect.isasyncgenfunction(method) and _params(method) == ["self", "body", "call_method", "raw_request"],
            f"{inspect.signature(method)}")


def test_llm_responses_forwards_arguments():
    class Fake:
        def _get_response(self, *, body, call_method, raw_request=None):
            return (body, call_method, raw_request)

    assert rc.llm_responses(Fake(), "b", "chat", "r") == ("b", "chat", "r")
    with pytest.raises(rc.RayCompatError, match="_get_response"):
        rc.llm_responses(object(), "b", "chat")


def test_arm_calls_are_kept_through_the_configured_handle_and_cancelled():
    """cancellable_arm_calls hooks OpenAiIngress._get_configured_serve_handle(model_id), the handle
    `_get_response` calls the arm through; what `.remote()` returns has Serve's `cancel()`."""
    from ray.serve.handle import DeploymentResponseGenerator
    from ray.serve.llm.ingress import OpenAiIngress

    method = getattr(OpenAiIngress, "_get_configured_serve_handle", None)
    _expect("OpenAiIngress._get_configured_serve_handle", method is not None and _params(method) == ["self", "model_id"],
            f"{method and inspect.signature(method)}")
    _expect("OpenAiIngress._get_response", "self._get_configured_serve_handle(" in inspect.getsource(
        OpenAiIngress._get_response), "no longer calls the arm through _get_configured_serve_handle")
    _expect("DeploymentResponseGenerator.cancel", callable(getattr(DeploymentResponseGenerator, "cancel", None)),
            "missing")

    class Call:
        def __init__(self, args):
            self.args, self.cancelled = args, False

        def cancel(self):
            self.cancelled = True

    class Handle:
        def __init__(self, opts=()):
            self.opts = opts

        def options(self, **kw):
            return Handle(self.opts + tuple(sorted(kw.items())))

        def __getattr__(self, method):
            return Handle(self.opts + (("method_name", method),))

        def remote(self, *args):
            return Call((self.opts, args))

    class Base:
        def _get_configured_serve_handle(self, model_id):
            return Handle((("model", model_id),))

    ingress = rc.cancellable_arm_calls(type("Ingress", (Base,), {}))()
    outside = ingress._get_configured_serve_handle("m").chat.remote("x")
    with rc.ArmCalls() as calls:
        handle = ingress._get_configured_serve_handle("m").options(session_id="s")
        call = handle.chat.remote("body")
    after = ingress._get_configured_serve_handle("m").chat.remote("y")
    assert call.args == ((("model", "m"), ("session_id", "s"), ("method_name", "chat")), ("body",))
    assert calls == [call] and calls.cancel() == 1 and call.cancelled
    assert not outside.cancelled and not after.cancelled and calls.cancel() == 0
    with pytest.raises(rc.RayCompatError, match="_get_configured_serve_handle"):
        rc.cancellable_arm_calls(type("Bare", (), {}))


def test_stream_formatting_and_response_types():
    fmt = _private("apply_openai_json_format")
    assert fmt(["data: {}\n\n", "data: [DONE]\n\n"]) == "data: {}\n\ndata: [DONE]\n\n"
    assert fmt([{"a": 1}]) == 'data: {"a": 1}\n\n'
    response_cls = _private("ChatCompletionResponse")
    error_cls = _private("ErrorResponse")
    _expect("NON_STREAMING_RESPONSE_TYPES", response_cls in _private("NON_STREAMING_RESPONSE_TYPES")
            and error_cls not in _private("NON_STREAMING_RESPONSE_TYPES"), "chat response not a non-streaming type")
    error = error_cls(error={"message": "m", "type": "T", "code": 500})
    assert error.error.code == 500 and error.error.message == "m"
    assert float(_private("ROUTER_HTTP_TIMEOUT_S")) > 0


def test_metric_recorder_records_and_skips_discarded_metrics():
    import warnings

    from ray.util import metrics

    counter = metrics.Counter("corral_compat_test_requests", "t", tag_keys=("arm",))
    record = rc.metric_recorder(counter)
    _expect("ray.util.metrics.Metric._metric.record", callable(record), "not callable")
    record(2, tags={"arm": "a"})  # no Ray running: recorded locally, must not raise
    hist = metrics.Histogram("corral_compat_test_latency", "t", boundaries=[0.1, 1.0], tag_keys=("arm",))
    rc.metric_recorder(hist)(0.5, tags={"arm": "a"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        discarded = metrics.Counter("0-not a metric name", "t")
    assert rc.metric_recorder(discarded)(1, tags={}) is None
    with pytest.raises(rc.RayCompatError, match="_metric.record"):
        rc.metric_recorder(object())


def test_available_resources_per_node_shape():
    fn = rc.resolve("ray._private.state", "available_resources_per_node")
    _expect("ray._private.state.available_resources_per_node", _params(fn) == [], f"{inspect.signature(fn)}")


def _ctx(current: int, target: int, total_requests: float, config):
    from ray.serve.config import AutoscalingContext

    return AutoscalingContext(
        deployment_id=None, deployment_name="d", app_name="a", current_num_replicas=current,
        target_num_replicas=target, running_replicas=[], total_num_requests=total_requests,
        total_queued_requests=0, aggregated_metrics={}, raw_metrics={}, capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=10, policy_state={}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=0.0, config=config)


def _config(**kw):
    from ray.serve.config import AutoscalingConfig

    return AutoscalingConfig(min_replicas=0, max_replicas=10, **kw)


def test_cold_start_replicas():
    fn = rc.resolve(rc._POLICY, "_get_cold_start_scale_up_replicas")
    _expect("_get_cold_start_scale_up_replicas", _params(fn) == ["ctx"], f"{inspect.signature(fn)}")
    config = _config(upscaling_factor=3.0)
    # From zero replicas with requests waiting: ceil(1 * upscaling_factor), at least the target.
    assert rc.cold_start_replicas(_ctx(0, 0, 5, config)) == 3
    assert rc.cold_start_replicas(_ctx(0, 4, 5, config)) == 4
    assert rc.cold_start_replicas(_ctx(1, 1, 5, config)) is None
    assert rc.cold_start_replicas(_ctx(0, 0, 0, config)) is None


def test_internal_policy_state():
    fn = rc.resolve(rc._POLICY, "_extract_internal_policy_state")
    _expect("_extract_internal_policy_state", _params(fn) == ["policy_state"], f"{inspect.signature(fn)}")
    empty = rc.internal_policy_state({"corral": {"x": 1}})
    _expect("_extract_internal_policy_state", len(empty) >= 1 and "corral" not in empty,
            f"returned {empty}")
    # What the delay logic writes comes back out; the policy's own keys do not.
    _, state = rc.apply_delay_logic(3, 1, _config(upscale_delay_s=10.0), {}, _now=0.0)
    assert rc.internal_policy_state({**state, "corral": 1}) == state


def test_apply_scaling_factors():
    fn = rc.resolve(rc._POLICY, "_apply_scaling_factors")
    _expect("_apply_scaling_factors",
            _params(fn) == ["desired_num_replicas", "current_num_replicas", "autoscaling_config"],
            f"{inspect.signature(fn)}")
    # 2 -> 5 with upscaling_factor 0.5: ceil(2 + 0.5 * 3) = 4.
    assert rc.apply_scaling_factors(5, 2, _config(upscaling_factor=0.5)) == 4
    assert rc.apply_scaling_factors(5, 2, _config()) == 5


def test_apply_delay_logic():
    fn = rc.resolve(rc._POLICY, "_apply_delay_logic")
    _expect("_apply_delay_logic",
            _params(fn) == ["desired_num_replicas", "curr_target_num_replicas", "config", "policy_state", "_now"],
            f"{inspect.signature(fn)}")
    config = _config(upscale_delay_s=10.0)
    decided, state = rc.apply_delay_logic(3, 1, config, {}, _now=100.0)
    assert decided == 1  # the delay has not passed: keep the target
    decided, state = rc.apply_delay_logic(3, 1, config, state, _now=111.0)
    assert decided == 3


def test_process_llm_request_shape():
    from ray.serve.llm.ingress import OpenAiIngress

    method = getattr(OpenAiIngress, "_process_llm_request", None)
    _expect("OpenAiIngress._process_llm_request", method is not None, "missing")
    _expect("OpenAiIngress._process_llm_request",
            inspect.iscoroutinefunction(method) and _params(method) == ["self", "body", "call_method", "raw_request"],
            f"{inspect.signature(method)}")


async def _echo(body, call_method, raw_request=None):
    return (body, call_method, raw_request)


def test_process_llm_request_forwards_arguments():
    import asyncio

    class Fake:
        _process_llm_request = staticmethod(_echo)

    assert asyncio.run(rc.process_llm_request(Fake(), "b", "chat", "r")) == ("b", "chat", "r")
    with pytest.raises(rc.RayCompatError, match="_process_llm_request"):
        asyncio.run(rc.process_llm_request(object(), "b", "chat"))
