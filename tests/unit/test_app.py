"""Fleet -> Ray Serve LLM config translation (pure; the e2e tests deploy it for real)."""

from pathlib import Path

import pytest

from corral.cluster.spec import load_fleet, parse_fleet
from corral.serving.app import (
    cpu_thread_binds,
    ingress_replicas,
    ingress_user_config,
    llm_config_dicts,
    route_weights,
    serve_config,
    set_replica_floor,
    set_route_weights,
)

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_cores_are_shared_out_per_worker():
    assert cpu_thread_binds(load_fleet()) == ["0-1"]  # one engine alone gets both cores
    four = parse_fleet({"cluster": {"devices_per_node": 4},
                        "arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}, "engine": {"tensor_parallel_size": 2}}]})
    assert cpu_thread_binds(four) == ["0-1|2-3"]


def test_cpu_arms_that_scale_out_run_unpinned_with_one_thread_per_worker():
    # Pinning is per arm, so replicas of a scaling arm would all share the same cores.
    fleet = parse_fleet({"cluster": {"devices_per_node": 2}, "arms": [
        {"name": "fixed", "model": {"demo": "tiny-llama2-random"}},
        {"name": "elastic", "model": {"demo": "tiny-llama2-random"}, "replicas": {"min": 1, "max": 2}},
    ]})
    assert cpu_thread_binds(fleet) == ["0-1", "nobind"]  # the pinned arm keeps both cores
    fixed, elastic = (c["runtime_env"]["env_vars"] for c in llm_config_dicts(fleet, Path("/models")))
    assert elastic["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and elastic["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in fixed


def test_cpu_arms_get_cores_kv_cache_and_eager():
    fleet = load_fleet(ROOT / "tests/e2e/fleets/ab.yaml")
    assert cpu_thread_binds(fleet) == ["0", "1", "0|1", "nobind"]
    cfgs = {c["model_loading_config"]["model_id"]: c for c in llm_config_dicts(fleet, Path("/models"))}
    tp2 = cfgs["tiny-random-tp2"]
    assert tp2["engine_kwargs"]["tensor_parallel_size"] == 2
    assert tp2["engine_kwargs"]["enforce_eager"] is True  # resolved from None on device=cpu
    assert "gpu_memory_utilization" not in tp2["engine_kwargs"]
    assert tp2["placement_group_config"]["bundles"] == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert tp2["accelerator_config"] == {"kind": "cpu"}
    assert tp2["runtime_env"]["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert tp2["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert cfgs["smollm2"]["model_loading_config"]["model_source"] == "/models/models/smollm2-135m-instruct"


def test_gpu_arm_requests_gpus_and_accelerator_type():
    fleet = parse_fleet({
        "cluster": {"device": "gpu", "nodes": 2, "devices_per_node": 4},
        "arms": [{"name": "l3", "model": {"hf": "meta-llama/Meta-Llama-3-70B-Instruct"},
                  "engine": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2},
                  "placement": {"accelerator_type": "A100-80G", "strategy": "PACK"}}],
    })
    (cfg,) = llm_config_dicts(fleet)
    assert cfg["placement_group_config"]["bundles"] == [{"CPU": 1.0, "GPU": 1}] * 8
    assert cfg["accelerator_type"] == "A100-80G"
    assert cfg["engine_kwargs"]["enforce_eager"] is False
    assert "VLLM_CPU_KVCACHE_SPACE" not in cfg["runtime_env"]["env_vars"]


def test_serve_config_carries_the_fleet_and_live_knobs_as_overrides():
    fleet = load_fleet(ROOT / "tests/e2e/fleets/ab.yaml")
    app = serve_config(fleet)["applications"][0]
    assert app["import_path"] == "corral.serving.app:app_builder"
    # Routes and keys are live knobs (ingress user_config), not part of the code version in args.
    assert parse_fleet(app["args"]["fleet"]) == fleet.model_copy(update={"routes": []})
    routes = {"llama": {"smollm2": 50, "tiny-random": 50}, "tiny": {"tiny-random": 100, "tiny-random-tp2": 0}}
    assert route_weights(app) == routes
    assert ingress_user_config(fleet) == {"routes": routes, "auth": {"enabled": False, "keys": []},
                                          "admission": fleet.admission.model_dump(mode="json")}
    assert "admission" not in app["args"]["fleet"]  # limits apply in place too


def test_live_changes_keep_serves_code_version():
    """Serve restarts every replica when an app's code version changes; weights and floors must not."""
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeApplicationSchema

    fleet = load_fleet(ROOT / "tests/e2e/fleets/ab.yaml")
    app = serve_config(fleet)["applications"][0]
    version = get_app_code_version(ServeApplicationSchema(**app))
    assert set_route_weights(app, "llama", {"smollm2": 30, "tiny-random": 70}) is True
    assert set_route_weights(app, "llama", {"smollm2": 30, "tiny-random": 70}) is False
    assert set_replica_floor(app, "tiny-random", 1) is False  # already the spec's min
    assert route_weights(app)["llama"] == {"smollm2": 30, "tiny-random": 70}
    assert get_app_code_version(ServeApplicationSchema(**app)) == version
    with pytest.raises(ValueError, match="sum to 100"):
        set_route_weights(app, "llama", {"smollm2": 30, "tiny-random": 60})
    with pytest.raises(ValueError, match="unknown arm"):
        set_route_weights(app, "llama", {"smollm2": 50, "gpt": 50})


def test_replica_floor_override_is_capped_and_restorable():
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeApplicationSchema

    fleet = parse_fleet({"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}, "replicas": {"min": 1, "max": 3}}]})
    app = serve_config(fleet)["applications"][0]
    version = get_app_code_version(ServeApplicationSchema(**app))
    (override,) = [d for d in app["deployments"] if d["name"] == "LLMServer:a"]
    assert set_replica_floor(app, "a", 2) is True and override["autoscaling_config"]["min_replicas"] == 2
    assert set_replica_floor(app, "a", 9) is True and override["autoscaling_config"]["min_replicas"] == 3
    assert set_replica_floor(app, "a", None) is True and override["autoscaling_config"]["min_replicas"] == 1
    assert get_app_code_version(ServeApplicationSchema(**app)) == version


def test_max_ongoing_requests_is_one_rule_used_by_the_deployment():
    from corral.cluster.spec.autoscaling import max_ongoing_requests

    assert [max_ongoing_requests(n) for n in (1, 3, 4, 16, 256)] == [8, 8, 8, 32, 512]
    with pytest.raises(ValueError, match="max_num_seqs"):
        max_ongoing_requests(0)
    fleet = parse_fleet({"arms": [
        {"name": "small", "model": {"demo": "tiny-llama2-random"}, "engine": {"max_num_seqs": 2},
         "autoscaling": {"target_ongoing_requests": 2}},
        {"name": "big", "model": {"demo": "tiny-llama2-random"}, "engine": {"max_num_seqs": 24}},
    ]})
    got = {c["model_loading_config"]["model_id"]: c["deployment_config"]["max_ongoing_requests"]
           for c in llm_config_dicts(fleet, Path("/models"))}
    assert got == {"small": 8, "big": 48}


def test_fastapi_reads_every_ingress_endpoint_as_serve_builds_it():
    """The ingress class goes through Ray Serve LLM's `make_fastapi_ingress` as `app_builder` does;
    FastAPI analyses each handler's signature there (a `Request | None` parameter once made the
    whole app fail to deploy). Every route takes the request itself and no query parameters."""
    from ray.serve.llm.ingress import make_fastapi_ingress

    from corral.serving._ray_compat import DEFAULT_ENDPOINTS
    from corral.serving.ingress import CorralIngress, ingress_app

    app = ingress_app()
    endpoints = {**DEFAULT_ENDPOINTS, "feedback": lambda a: a.post("/v1/feedback"),
                 "routes": lambda a: a.get("/v1/corral/routes")}
    make_fastapi_ingress(CorralIngress, endpoint_map=endpoints, app=app)
    routes = {r.path: r for r in app.routes if getattr(r, "path", "").startswith("/v1/")}
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/corral/routes"} <= set(routes)
    for path, route in routes.items():
        assert route.dependant.query_params == [], (path, [p.name for p in route.dependant.query_params])


def test_ingress_min_replicas_reaches_serves_autoscaling_config():
    """server.ingress_min_replicas on top of Ray Serve LLM's own ingress options, validated by
    Serve's AutoscalingConfig (min <= initial <= max); scale-to-zero fleets keep Ray's 0."""
    from ray.serve.config import AutoscalingConfig

    from corral.serving.ingress import CorralIngress

    stock = CorralIngress.get_deployment_options([])
    fleet = parse_fleet({"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}}],
                         "server": {"ingress_min_replicas": 3}})
    opts = ingress_replicas(stock, fleet.server.ingress_min_replicas)
    cfg = AutoscalingConfig(**opts["autoscaling_config"])
    assert (cfg.min_replicas, cfg.initial_replicas) == (3, 3) and cfg.max_replicas >= 3
    assert opts["max_ongoing_requests"] == stock["max_ongoing_requests"]
    assert "min_replicas" not in stock.get("autoscaling_config", {})  # the input is not modified
    assert ingress_replicas({"autoscaling_config": {"min_replicas": 0}}, 3)["autoscaling_config"]["min_replicas"] == 0
    assert parse_fleet({"arms": [{"name": "a", "model": {"demo": "tiny-llama2-random"}}]}).server.ingress_min_replicas == 1
