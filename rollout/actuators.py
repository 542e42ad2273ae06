"""Actuators: how the rollout controller changes the fleet.

All writes are absolute and idempotent: `set_weights` with the weights already in effect
changes nothing and returns False. That is what lets a restarted controller re-apply its
persisted intent without a second weight change.

- `InMemoryActuator`: a fleet held in memory (tests, `--dry-run`).
- `KubeRayActuator`: patches the RayService's `spec.serveConfigV2` with the official
  `kubernetes` client.
- `LocalServeActuator`: the same operations against a local Ray cluster via Serve's REST API
  (`PUT /api/serve/applications/`).

Both edit per-deployment overrides of the fleet's Serve application, never its `args`
(Serve restarts every replica when `args` change): route weights in the ingress
`user_config`, replica floors as the arm's `autoscaling_config.min_replicas`. The fleet in
`args.fleet` keeps the spec's own values, so releasing a floor restores the spec's min.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Protocol

import yaml


class ActuatorError(RuntimeError):
    """The fleet could not be read or changed."""


class Actuator(Protocol):
    def get_weights(self, route: str) -> dict[str, int]:
        """Weights of `route` in effect now (arm -> percent)."""
        ...

    def set_weights(self, route: str, weights: dict[str, int]) -> bool:
        """Make `route`'s weights exactly `weights`; False if they already were."""
        ...

    def set_replica_floor(self, arm: str, floor: int | None) -> bool:
        """Keep at least `floor` replicas of `arm` (None = the fleet spec's own min); False if unchanged."""
        ...

    def ready_replicas(self, arms: list[str]) -> dict[str, int]:
        """Ready (running, health-checked) replicas per arm."""
        ...


class InMemoryActuator:
    """A fleet in memory; records every real change in `changes`."""

    def __init__(self, weights: dict[str, dict[str, int]], ready: dict[str, int] | None = None,
                 min_replicas: dict[str, int] | None = None):
        self.weights = copy.deepcopy(weights)
        self.ready = dict(ready or {})
        self.spec_min = dict(min_replicas or {})
        self.floors: dict[str, int] = {}
        self.changes: list[tuple[str, Any]] = []

    def get_weights(self, route):
        if route not in self.weights:
            raise ActuatorError(f"no route {route!r}")
        return dict(self.weights[route])

    def set_weights(self, route, weights):
        if self.get_weights(route) == weights:
            return False
        self.weights[route] = dict(weights)
        self.changes.append(("weights", dict(weights)))
        return True

    def set_replica_floor(self, arm, floor):
        if self.floors.get(arm) == floor:
            return False
        if floor is None:
            self.floors.pop(arm, None)
        else:
            self.floors[arm] = floor
        self.changes.append(("floor", (arm, floor)))
        return True

    def ready_replicas(self, arms):
        return {a: self.ready.get(a, 0) for a in arms}


# -- KubeRay -------------------------------------------------------------------------------


def fleet_app(serve_config: dict, app_name: str | None) -> dict:
    apps = serve_config.get("applications") or []
    for app in apps:
        if app_name is None or app.get("name") == app_name:
            if "fleet" not in (app.get("args") or {}):
                raise ActuatorError(f"serve application {app.get('name')!r} has no args.fleet")
            return app
    raise ActuatorError(f"no serve application {app_name!r} in serveConfigV2 (have {[a.get('name') for a in apps]})")


def _route(fleet: dict, route: str) -> dict:
    for r in fleet.get("routes") or []:
        if r.get("name") == route:
            return r
    raise ActuatorError(f"fleet has no route {route!r}")


def _arm(fleet: dict, arm: str) -> dict:
    for a in fleet.get("arms") or []:
        if a.get("name") == arm:
            return a
    raise ActuatorError(f"fleet has no arm {arm!r}")


def _weights_of(app: dict, route: str) -> dict[str, int]:
    from corral.serving.app import route_weights

    weights = route_weights(app)
    if route not in weights:
        raise ActuatorError(f"fleet has no route {route!r}")
    return weights[route]


def _apply_weights(app: dict, route: str, weights: dict[str, int]) -> bool:
    from corral.serving.app import set_route_weights

    try:
        return set_route_weights(app, route, weights)
    except (KeyError, ValueError) as exc:
        raise ActuatorError(str(exc)) from None


def _apply_floor(app: dict, arm: str, floor: int | None) -> bool:
    from corral.serving.app import set_replica_floor

    try:
        return set_replica_floor(app, arm, floor)
    except KeyError as exc:
        raise ActuatorError(str(exc)) from None


def _min_replicas(app: dict, fleet: dict, arm: str) -> int:
    """The arm's min_replicas in effect: the floor override if any, else the spec's min."""
    from corral.serving.app import llm_deployment_name

    for d in app.get("deployments") or []:
        if d.get("name") == llm_deployment_name(arm) and "min_replicas" in (d.get("autoscaling_config") or {}):
            return int(d["autoscaling_config"]["min_replicas"])
    return int((_arm(fleet, arm).get("replicas") or {}).get("min", 1))


def default_deployment_matches(arm: str, deployment: str) -> bool:
    """Does a Serve deployment name belong to `arm`? (Serve LLM names deployments after the model id.)"""
    return deployment == arm or deployment.endswith(f":{arm}") or deployment.endswith(f"-{arm}") or \
        deployment.endswith(f":{arm.replace('.', '_')}")


class KubeRayActuator:
    """Route weights and replica floors through the RayService custom resource."""

    def __init__(self, name: str, namespace: str = "default", app_name: str | None = None, api=None,
                 deployment_matches: Callable[[str, str], bool] = default_deployment_matches,
                 ready_replicas_fn: Callable[[list[str]], dict[str, int]] | None = None,
                 retries: int = 5):
        """`api` is a `kubernetes.client.CustomObjectsApi` (default: from kubeconfig / in-cluster).
        `ready_replicas_fn` overrides readiness (e.g. counting RUNNING replicas through the Ray
        dashboard's `/api/serve/applications/`); by default an arm counts its replica floor as
        ready once KubeRay reports its deployment HEALTHY (Serve reports HEALTHY only when the
        target replica count is running)."""
        if api is None:
            from kubernetes import client, config

            config.load_config()
            api = client.CustomObjectsApi()
        self.api, self.name, self.namespace, self.app_name = api, name, namespace, app_name
        self.deployment_matches, self.ready_replicas_fn, self.retries = deployment_matches, ready_replicas_fn, retries

    # reading --------------------------------------------------------------------------
    def _get(self) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object("ray.io", "v1", self.namespace, "rayservices", self.name)
        except ApiException as exc:
            raise ActuatorError(f"reading rayservice {self.namespace}/{self.name}: HTTP {exc.status} {exc.reason}") from exc

    def _fleet(self, obj: dict) -> tuple[dict, dict, dict]:
        raw = (obj.get("spec") or {}).get("serveConfigV2")
        if not raw:
            raise ActuatorError(f"rayservice {self.namespace}/{self.name} has no spec.serveConfigV2")
        config = yaml.safe_load(raw)
        app = fleet_app(config, self.app_name)
        return config, app, app["args"]["fleet"]

    def get_weights(self, route):
        _, app, _ = self._fleet(self._get())
        return _weights_of(app, route)

    def ready_replicas(self, arms):
        if self.ready_replicas_fn is not None:
            return self.ready_replicas_fn(arms)
        obj = self._get()
        _, app, fleet = self._fleet(obj)
        statuses = (((obj.get("status") or {}).get("activeServiceStatus") or {}).get("applicationStatuses") or {})
        deployments = (statuses.get(app.get("name")) or {}).get("serveDeploymentStatuses") or {}
        out = {}
        for arm in arms:
            healthy = any(self.deployment_matches(arm, d) and (st or {}).get("status") == "HEALTHY"
                          for d, st in deployments.items())
            out[arm] = _min_replicas(app, fleet, arm) if healthy else 0
        return out

    # writing --------------------------------------------------------------------------
    def _modify(self, change: Callable[[dict], bool]) -> bool:
        """Read, apply `change(app)` to the fleet's Serve application (False = nothing to do),
        write serveConfigV2 back with the resourceVersion we read (409 = changed meanwhile)."""
        from kubernetes.client.exceptions import ApiException

        from corral.rollout.kube import RayServiceConflict, patch_rayservice

        def edit(obj: dict):
            config, app, _ = self._fleet(obj)
            if not change(app):
                return None, False
            return {"spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False)}}, True

        try:
            return patch_rayservice(self.api, self.namespace, self.name, edit, self.retries, read=self._get)
        except ApiException as exc:
            raise ActuatorError(f"patching rayservice {self.namespace}/{self.name}: "
                                f"HTTP {exc.status} {exc.reason}") from exc
        except RayServiceConflict as exc:
            raise ActuatorError(str(exc)) from None

    def set_weights(self, route, weights):
        return self._modify(lambda app: _apply_weights(app, route, weights))

    def set_replica_floor(self, arm, floor):
        return self._modify(lambda app: _apply_floor(app, arm, floor))

class LocalServeActuator:
    """Route weights and replica floors on a local Ray cluster, through Serve's REST API.

    The running application's config is the state: a change re-applies the whole Serve config
    with edited per-deployment overrides (`PUT /api/serve/applications/`), like `corral up`.
    Weights reach the ingress as a user_config change; a floor is the
    arm's `min_replicas` override (see corral.serving.app.serve_config: neither restarts replicas).
    """

    def __init__(self, app_name: str, cluster=None):
        from corral.serving.local import LocalCluster

        self.app_name = app_name
        self.cluster = cluster or LocalCluster()

    def _update(self, change: Callable[[dict], bool]) -> bool:
        from corral.serving.local import LocalError

        try:
            return self.cluster.update_app(self.app_name, change)
        except LocalError as exc:
            raise ActuatorError(str(exc)) from None

    def get_weights(self, route):
        app = (self.cluster.app_status(self.app_name) or {}).get("deployed_app_config")
        if not app:
            raise ActuatorError(f"no running serve application {self.app_name!r}")
        return _weights_of(app, route)

    def set_weights(self, route, weights):
        return self._update(lambda app: _apply_weights(app, route, weights))

    def set_replica_floor(self, arm, floor):
        return self._update(lambda app: _apply_floor(app, arm, floor))

    def ready_replicas(self, arms):
        from corral.serving.local import replica_states

        app = self.cluster.app_status(self.app_name) or {}
        deployments = app.get("deployments") or {}
        return {
            arm: sum(replica_states(d).get("RUNNING", 0) for name, d in deployments.items()
                     if default_deployment_matches(arm, name))
            for arm in arms
        }
