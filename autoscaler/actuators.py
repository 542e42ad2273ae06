"""Actuators: how the rollout controller changes the fleet.

All writes are absolute and idempotent: `set_weights` with the weights already in effect
changes nothing and returns False. That is what lets a restarted controller re-apply its
persisted intent without a second weight change.

- `InMemoryActuator`: a fleet held in memory (tests, `--dry-run`).
- `KubeRayActuator`: patches the RayService's `spec.serveConfigV2` with the official
  `kubernetes` client; route weights live in `args.fleet.routes[].arms[].weight` of the
  fleet's application, replica floors in `args.fleet.arms[].replicas.min`.
- `LocalServeActuator` (lead): the same operations against a local Ray cluster via Serve's
  REST API (`PUT /api/serve/applications/`) or `serve.run` — implement the `Actuator`
  protocol below and pass it to `Controller`.
"""

from __future__ import annotations

import copy
import time
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

FLOOR_ANNOTATION = "corral.dev/replica-floors"
"""JSON {arm: spec min} remembered when a floor is raised, so releasing restores it."""


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
        _, _, fleet = self._fleet(self._get())
        return {a["arm"]: int(a["weight"]) for a in _route(fleet, route).get("arms", [])}

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
            replicas = _arm(fleet, arm).get("replicas") or {}
            out[arm] = int(replicas.get("min", 1)) if healthy else 0
        return out

    # writing --------------------------------------------------------------------------
    def _modify(self, change: Callable[[dict, dict], bool]) -> bool:
        """Read, apply `change(obj, fleet)` (False = nothing to do), write with resourceVersion."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(self.retries):
            obj = self._get()
            config, app, fleet = self._fleet(obj)
            if not change(obj, fleet):
                return False
            meta = obj.get("metadata") or {}
            # resourceVersion makes the merge patch conditional: 409 if the object changed since our read.
            body: dict[str, Any] = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                                    "spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False)}}
            floors = (meta.get("annotations") or {}).get(FLOOR_ANNOTATION)
            if floors is not None:
                body["metadata"]["annotations"] = {FLOOR_ANNOTATION: floors}
            try:
                self.api.patch_namespaced_custom_object("ray.io", "v1", self.namespace, "rayservices",
                                                        self.name, body)
                return True
            except ApiException as exc:
                if exc.status != 409:
                    raise ActuatorError(f"patching rayservice {self.namespace}/{self.name}: "
                                        f"HTTP {exc.status} {exc.reason}") from exc
                time.sleep(0.05 * (attempt + 1))
        raise ActuatorError(f"rayservice {self.namespace}/{self.name} kept changing under us ({self.retries} attempts)")

    def set_weights(self, route, weights):
        def change(obj, fleet):
            r = _route(fleet, route)
            current = {a["arm"]: int(a["weight"]) for a in r.get("arms", [])}
            if current == weights:
                return False
            unknown = sorted(set(weights) - {a["name"] for a in fleet.get("arms", [])})
            if unknown:
                raise ActuatorError(f"weights name unknown arm(s) {unknown}")
            if sum(weights.values()) != 100:
                raise ActuatorError(f"weights must sum to 100, got {weights}")
            r["arms"] = [{"arm": a, "weight": w} for a, w in weights.items()]
            return True

        return self._modify(change)

    def set_replica_floor(self, arm, floor):
        import json

        def change(obj, fleet):
            meta = obj.setdefault("metadata", {})
            annotations = meta.setdefault("annotations", {}) or {}
            meta["annotations"] = annotations
            saved = json.loads(annotations.get(FLOOR_ANNOTATION) or "{}")
            replicas = _arm(fleet, arm).setdefault("replicas", {})
            current_min = int(replicas.get("min", 1))
            if floor is None:
                if arm not in saved:
                    return False
                replicas["min"] = saved.pop(arm)
            else:
                original = saved.get(arm, current_min)
                target = max(original, floor)
                if current_min == target:
                    return False
                saved.setdefault(arm, original)
                replicas["min"] = target
                replicas["max"] = max(int(replicas.get("max", target)), target)
                if replicas.get("initial") is not None and replicas["initial"] < target:
                    replicas["initial"] = target
            annotations[FLOOR_ANNOTATION] = json.dumps(saved, sort_keys=True)
            return True

        return self._modify(change)
