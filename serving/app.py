"""Fleet spec -> Ray Serve LLM application.

Each arm becomes one Ray Serve LLM deployment (`LLMConfig` + vLLM engine). The whole fleet
is one Serve application behind Ray Serve LLM's OpenAI-compatible ingress.

The translation is a pure function of the spec (and where demo models live), so the same
code produces the local `serve.run` app and the `serveConfigV2` that the Helm chart
and the KubeRay actuator write.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from corral.cluster.models import demo_model_dir
from corral.cluster.spec import Arm, FleetSpec
from corral.cluster.spec.autoscaling import max_ongoing_requests, serve_autoscaling_config

# Environment every vLLM engine process gets.
BASE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
# Added for arms whose weights are local files (demo models, paths): never let a replica hang on an
# unreachable hub. Hub-id arms inherit HF_HUB_OFFLINE from the node's environment instead: the local
# runner sets it (serving/local.py), the Helm chart sets it only for a pre-filled model cache
# (modelCache.offline), so a GPU fleet with an HF token downloads its weights.
LOCAL_WEIGHTS_ENV = {"HF_HUB_OFFLINE": "1"}


def model_source(arm: Arm, home: Path | None = None) -> str:
    """The path or hub id vLLM loads for an arm."""
    src = arm.model
    if src.demo:
        return str(demo_model_dir(src.demo, home))
    if src.path:
        return str(Path(src.path).expanduser())
    return str(src.hf)


def cpu_thread_binds(fleet: FleetSpec) -> list[str]:
    """One `VLLM_CPU_OMP_THREADS_BIND` value per arm on device=cpu.

    Every TP worker gets its own OpenMP thread group. With at least as many workers as cores,
    workers get one core each, handed out round-robin (a TP=2 engine gets `0|1`, two TP=1
    engines get `0` and `1`); with fewer workers than cores, each worker gets a block of
    cores (a lone TP=1 engine on 2 cores gets `0-1`).

    An arm that can have more than one replica gets `nobind` instead: the binding is part of
    the arm's config, so every replica would be pinned to the same cores. Its workers run one
    OpenMP thread each, unpinned (see `llm_config_dict`), and the OS spreads replicas over
    the cores, so a second replica adds capacity as it would on a second GPU.
    """
    cores = fleet.cluster.devices_per_node
    pinned = [arm for arm in fleet.arms if arm.replicas.max == 1]
    workers = sum(arm.engine.tensor_parallel_size for arm in pinned)
    per_worker = max(1, cores // max(workers, 1))
    binds, next_core = [], 0
    for arm in fleet.arms:
        if arm.replicas.max > 1:
            binds.append(NO_BIND)
            continue
        groups = []
        for _ in range(arm.engine.tensor_parallel_size):
            first = next_core % cores
            groups.append(str(first) if per_worker == 1 else f"{first}-{first + per_worker - 1}")
            next_core += per_worker
        binds.append("|".join(groups))
    return binds


NO_BIND = "nobind"


def llm_config_dict(arm: Arm, fleet: FleetSpec, home: Path | None = None, cpu_bind: str | None = None) -> dict[str, Any]:
    """The Ray Serve LLM `LLMConfig` (as a plain dict, YAML-able for serveConfigV2) for one arm."""
    # Prompts and completions are never logged, whatever `engine.extra` says: vLLM logs each request's
    # prompt when `enable_log_requests` is true (vllm/engine/arg_utils.py AsyncEngineArgs.enable_log_requests,
    # passed as log_requests in ray/llm/_internal/serve/engines/vllm/vllm_engine.py).
    engine = {**arm.engine.to_vllm(), "enable_log_requests": False}
    if engine["enforce_eager"] is None:
        engine["enforce_eager"] = fleet.cluster.device == "cpu"
    env = dict(BASE_ENV)
    if not arm.model.hf:
        env.update(LOCAL_WEIGHTS_ENV)
    tp, pp = arm.engine.tensor_parallel_size, arm.engine.pipeline_parallel_size
    workers = tp * pp
    if fleet.cluster.device == "cpu":
        # vLLM's CPU backend: no GPU memory knob, KV cache sized in GiB, one OpenMP thread
        # group per TP worker pinned to its own core(s).
        engine.pop("gpu_memory_utilization", None)
        env["VLLM_CPU_KVCACHE_SPACE"] = _gib(fleet.cluster.cpu_kvcache_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind or "auto"
        if cpu_bind == NO_BIND:
            env["OMP_NUM_THREADS"] = "1"  # unpinned: one thread per worker, the OS places them
        bundle = {"CPU": arm.placement.cpus_per_worker}
    else:
        bundle = {"CPU": arm.placement.cpus_per_worker, "GPU": 1}
    autoscaling = arm.autoscaling
    cfg: dict[str, Any] = {
        "model_loading_config": {"model_id": arm.name, "model_source": model_source(arm, home)},
        "engine_kwargs": engine,
        "runtime_env": {"env_vars": env},
        "placement_group_config": {"bundles": [dict(bundle) for _ in range(workers)], "strategy": arm.placement.strategy},
        "deployment_config": {
            "autoscaling_config": serve_autoscaling_config(
                autoscaling, arm=arm.name, min_replicas=arm.replicas.min, max_replicas=arm.replicas.max,
                initial_replicas=arm.replicas.start, max_num_seqs=arm.engine.max_num_seqs,
            ),
            "max_ongoing_requests": max_ongoing_requests(arm.engine.max_num_seqs),
        },
        "log_engine_metrics": True,
    }
    if fleet.cluster.device == "cpu":
        cfg["accelerator_config"] = {"kind": "cpu"}
    elif arm.placement.accelerator_type:
        cfg["accelerator_type"] = arm.placement.accelerator_type
    return cfg


def _gib(value: float) -> str:
    # VLLM_CPU_KVCACHE_SPACE takes whole GiB.
    return str(max(1, round(value)))


def llm_config_dicts(fleet: FleetSpec, home: Path | None = None) -> list[dict[str, Any]]:
    binds = cpu_thread_binds(fleet) if fleet.cluster.device == "cpu" else [None] * len(fleet.arms)
    return [llm_config_dict(arm, fleet, home, bind) for arm, bind in zip(fleet.arms, binds)]


INGRESS_DEPLOYMENT = "CorralIngress"


def llm_deployment_name(arm: str) -> str:
    """Ray Serve LLM names each model's deployment after its model id."""
    return f"LLMServer:{arm}"


def ingress_replicas(options: dict[str, Any], min_replicas: int) -> dict[str, Any]:
    """The ingress deployment's options with at least `min_replicas` replicas (and max_replicas
    raised to match). Ray Serve LLM sets min_replicas 0 when every arm scales to zero
    (ray/llm/_internal/serve/core/ingress/ingress.py, `OpenAiIngress.get_deployment_options`): kept."""
    out = copy.deepcopy(options)
    scaling = out.setdefault("autoscaling_config", {})
    if scaling.get("min_replicas") == 0:
        return out
    scaling["min_replicas"] = min_replicas
    scaling["initial_replicas"] = max(scaling.get("initial_replicas") or 0, min_replicas)
    scaling["max_replicas"] = max(scaling.get("max_replicas") or 1, min_replicas)
    return out


def ingress_user_config(fleet: FleetSpec) -> dict[str, Any]:
    """What the ingress receives through Serve's user_config (lightweight, in-place updates)."""
    return {"routes": {r.name: r.weights() for r in fleet.routes}, "auth": fleet.auth.model_dump(mode="json"),
            "admission": fleet.admission.model_dump(mode="json")}


def ingress_class():
    """CorralIngress as a Serve ingress: its FastAPI app (`ingress_app`: Ray Serve LLM's, plus
    AdmissionGate) with the OpenAI endpoints and corral's (feedback, routes). What `app_builder`
    deploys; a replica runs the app for every HTTP request."""
    from ray.serve.llm.ingress import make_fastapi_ingress

    from corral.serving._ray_compat import DEFAULT_ENDPOINTS
    from corral.serving.ingress import CorralIngress, ingress_app

    endpoints = {**DEFAULT_ENDPOINTS, "feedback": lambda app: app.post("/v1/feedback"),
                 "routes": lambda app: app.get("/v1/corral/routes")}
    return make_fastapi_ingress(CorralIngress, endpoint_map=endpoints, app=ingress_app())


def app_builder(args: dict[str, Any]):
    """Serve application builder: `import_path: corral.serving.app:app_builder`, `args: {fleet: ...}`.

    Used by `corral up` locally and by serveConfigV2 on KubeRay, so both deploy the same
    graph from the same fleet document. The fleet is validated again here: an invalid spec
    fails the deploy before any replica starts.
    """
    from ray import serve
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from corral.cluster.spec import parse_fleet
    from corral.serving._ray_compat import to_model_metadata
    from corral.serving.ingress import CorralIngress
    from corral.serving.llm_server import CorralLLMServer

    fleet = parse_fleet(args.get("fleet"), source="serve args.fleet")
    home = Path(args["corral_home"]) if args.get("corral_home") else None
    configs = [LLMConfig(**d) for d in llm_config_dicts(fleet, home)]
    # CorralLLMServer = LLMServer + engine signals for the autoscaler; same deployment names.
    deployments = {c.model_id: build_llm_deployment(c, deployment_cls=CorralLLMServer, name_prefix="LLMServer:")
                   for c in configs}
    cards = {c.model_id: to_model_metadata(c.model_id, c) for c in configs}
    ingress = ingress_class()
    options = ingress_replicas(CorralIngress.get_deployment_options(configs), fleet.server.ingress_min_replicas)
    # Initial weights; the Serve config's `deployments` override (see serve_config) wins.
    options["user_config"] = ingress_user_config(fleet)
    return serve.deployment(ingress, name=INGRESS_DEPLOYMENT, **options).bind(
        llm_deployments=deployments, model_cards=cards, admission=fleet.admission.model_dump(mode="json")
    )


def serve_config(fleet: FleetSpec, home: Path | None = None) -> dict[str, Any]:
    """A complete Serve config (what `serve deploy`, the REST API and serveConfigV2 take).

    Serve derives an application's code version from its `args`: any change there restarts
    every replica. So the live knobs are not in `args` but in per-deployment overrides, which
    Serve applies in place: route weights as the ingress `user_config`, replica floors as the
    arms' `autoscaling_config.min_replicas` (the full autoscaling config is always present,
    so its policy, part of the code version, never changes). See set_route_weights /
    set_replica_floor.
    """
    args: dict[str, Any] = {"fleet": fleet.model_dump(mode="json", exclude_none=True, exclude={"routes", "rollout", "auth", "admission"})}
    if home is not None:
        args["corral_home"] = str(home)
    deployments = [{"name": INGRESS_DEPLOYMENT, "user_config": ingress_user_config(fleet)}]
    for cfg in llm_config_dicts(fleet, home):
        arm = cfg["model_loading_config"]["model_id"]
        deployments.append({"name": llm_deployment_name(arm), "autoscaling_config": cfg["deployment_config"]["autoscaling_config"]})
    return {
        "applications": [{
            "name": fleet.name,
            "route_prefix": "/",
            "import_path": "corral.serving.app:app_builder",
            "args": args,
            "deployments": deployments,
        }]
    }


# -- live changes on a Serve config (used by the local and KubeRay actuators) ----------------

def _override(app: dict[str, Any], name: str) -> dict[str, Any]:
    deployments = app.setdefault("deployments", [])
    for d in deployments:
        if d.get("name") == name:
            return d
    d = {"name": name}
    deployments.append(d)
    return d


def route_weights(app: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Weights in effect: the ingress override, else the routes in args.fleet (Helm renders those)."""
    for d in app.get("deployments") or []:
        if d.get("name") == INGRESS_DEPLOYMENT and "routes" in (d.get("user_config") or {}):
            return {r: dict(w) for r, w in d["user_config"]["routes"].items()}
    fleet = (app.get("args") or {}).get("fleet") or {}
    return {r["name"]: {a["arm"]: int(a["weight"]) for a in r.get("arms", [])} for r in fleet.get("routes") or []}


def set_route_weights(app: dict[str, Any], route: str, weights: dict[str, int]) -> bool:
    """Set one route's weights in the ingress override. False if they already were."""
    routes = route_weights(app)
    if route not in routes:
        raise KeyError(f"no route {route!r}; routes are {sorted(routes)}")
    arms = {a["name"] for a in ((app.get("args") or {}).get("fleet") or {}).get("arms", [])}
    unknown = sorted(set(weights) - arms)
    if unknown:
        raise ValueError(f"weights for route {route!r} name unknown arm(s) {unknown}")
    if sum(weights.values()) != 100 or min(weights.values(), default=0) < 0:
        raise ValueError(f"weights for route {route!r} must be >= 0 and sum to 100, got {weights}")
    if routes[route] == weights:
        return False
    routes[route] = dict(weights)
    override = _override(app, INGRESS_DEPLOYMENT)
    override["user_config"] = {**(override.get("user_config") or {}), "routes": routes}
    return True


def _set_ingress_config(app: dict[str, Any], key: str, value: dict[str, Any]) -> bool:
    """Replace one key of the ingress's user_config override. False if unchanged."""
    override = _override(app, INGRESS_DEPLOYMENT)
    user_config = dict(override.get("user_config") or {"routes": route_weights(app)})
    if user_config.get(key) == value:
        return False
    user_config[key] = value
    override["user_config"] = user_config
    return True


def set_auth(app: dict[str, Any], auth: dict[str, Any]) -> bool:
    """Replace the ingress's API keys (an AuthSpec dump). False if unchanged."""
    return _set_ingress_config(app, "auth", auth)


def set_admission(app: dict[str, Any], admission: dict[str, Any]) -> bool:
    """Replace the ingress's admission limits (an AdmissionSpec dump). False if unchanged."""
    return _set_ingress_config(app, "admission", admission)


def set_replica_floor(app: dict[str, Any], arm: str, floor: int | None, home: Path | None = None) -> bool:
    """Raise an arm's min_replicas to `floor` (None: back to the spec's min). False if unchanged."""
    from corral.cluster.spec import parse_fleet

    fleet = parse_fleet(app["args"]["fleet"], source="serve args.fleet")
    spec_arm = fleet.arm(arm)
    override = _override(app, llm_deployment_name(arm))
    if "autoscaling_config" not in override:
        # First live change on a config that had no override (e.g. rendered by Helm).
        (cfg,) = [c for c in llm_config_dicts(fleet, home) if c["model_loading_config"]["model_id"] == arm]
        override["autoscaling_config"] = cfg["deployment_config"]["autoscaling_config"]
    auto = override["autoscaling_config"]
    want = spec_arm.replicas.min if floor is None else min(max(spec_arm.replicas.min, floor), spec_arm.replicas.max)
    if auto.get("min_replicas") == want:
        return False
    auto["min_replicas"] = want
    return True
