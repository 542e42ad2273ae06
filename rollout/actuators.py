"""Actuators: how the rollout controller changes the fleet.

All writes are absolute and idempotent: `set_weights` with the weights already in effect
changes nothing and returns False. That is what lets a restarted controller re-apply its
persisted intent without a second weight change.

- `InMemoryActuator`: a fleet held in memory (tests).
- `KubeRayActuator`: patches the RayService's `spec.serveConfigV2` with the official
  `kubernetes` client.
- `LocalServeActuator`: the same operations against a local Ray cluster via Serve's REST API
  (`PUT /api/serve/applications/`).

Both edit per-deployment overrides of the fleet's Serve application, never its `args`
(Serve restarts every replica when `args` change): route weights and a shadow stage's setting
in the ingress `user_config`, replica floors as the arm's `autoscaling_config.min_replicas`. The fleet in
`args.fleet` keeps the spec's own values, so releasing a floor restores the spec's min.

What they *read* is what Serve runs, not what was written: both read Serve's REST status
(`GET /api/serve/applications/`, Ray's `ServeInstanceDetails` in ray/serve/schema.py), which
carries per deployment its status and its live replicas with their states. Ready replicas
are the arm's RUNNING ones; route weights are *applied* once the ingress deployment is
HEALTHY, which Serve reports only when every replica runs the target version, i.e. has
taken the new user_config (ray/serve/_private/deployment_state.py,
`DeploymentState.check_curr_status`: HEALTHY needs `target_num_replicas ==
running_at_target_version_replica_cnt == all_running_replica_cnt` and no STARTING/UPDATING
replica). While it is not, `get_weights` answers None (not known to be in effect).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import yaml


class ActuatorError(RuntimeError):
    """The fleet could not be read or changed."""


DEAD_STATUSES = ("UNHEALTHY", "DEPLOY_FAILED")
"""Serve deployment statuses (ray/serve/_private/common.py `DeploymentStatus`) of an arm that is
not serving and will not recover by waiting alone."""


@dataclass(frozen=True)
class ArmStatus:
    """One arm as Serve runs it."""

    ready: int
    """RUNNING replicas."""
    status: str = ""
    """Serve's deployment status (HEALTHY, UPDATING, UPSCALING, DOWNSCALING, UNHEALTHY,
    DEPLOY_FAILED); "" when Serve lists no deployment for the arm."""
    message: str = ""


class Actuator(Protocol):
    def get_weights(self, route: str) -> dict[str, int] | None:
        """Weights of `route` that Serve applies now (arm -> percent); None while a change
        is still being applied."""
        ...

    def set_weights(self, route: str, weights: dict[str, int]) -> bool:
        """Make `route`'s weights exactly `weights`; False if they already were."""
        ...

    def set_replica_floor(self, arm: str, floor: int | None) -> bool:
        """Keep at least `floor` replicas of `arm` (None = the fleet spec's own min); False if unchanged."""
        ...

    def arm_status(self, arms: list[str]) -> dict[str, ArmStatus]:
        """Each arm's running replicas and deployment status."""
        ...

    # The controller calls these two only for a rollout with a shadow stage.
    def get_shadow(self, route: str) -> dict[str, Any] | None:
        """The route's shadow setting the ingress runs ({} = none); None while a change is applied."""
        ...

    def set_shadow(self, route: str, setting: dict[str, Any] | None) -> bool:
        """Make the route's shadow setting exactly `setting` (None/{} = off); False if it already was."""
        ...


class InMemoryActuator:
    """A fleet in memory; records every real change in `changes`."""

    def __init__(self, weights: dict[str, dict[str, int]], ready: dict[str, int] | None = None,
                 min_replicas: dict[str, int] | None = None, status: dict[str, str] | None = None):
        self.weights = copy.deepcopy(weights)
        self.ready = dict(ready or {})
        self.status = dict(status or {})
        self.spec_min = dict(min_replicas or {})
        self.floors: dict[str, int] = {}
        self.shadow: dict[str, dict[str, Any]] = {}
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

    def arm_status(self, arms):
        return {a: ArmStatus(self.ready.get(a, 0), self.status.get(a, "HEALTHY")) for a in arms}

    def get_shadow(self, route):
        self.get_weights(route)
        return dict(self.shadow.get(route) or {})

    def set_shadow(self, route, setting):
        if self.get_shadow(route) == (setting or {}):
            return False
        if setting:
            self.shadow[route] = dict(setting)
        else:
            self.shadow.pop(route, None)
        self.changes.append(("shadow", dict(setting or {})))
        return True


# -- Serve's REST status -------------------------------------------------------------------


def serve_arm_status(app: dict | None, arms: list[str],
                     matches: Callable[[str, str], bool] | None = None) -> dict[str, ArmStatus]:
    """Arms from one application of `GET /api/serve/applications/` (Ray's `ApplicationDetails`:
    `deployments.<name>.status/message/replicas[].state`)."""
    from corral.serving.local import replica_states

    matches = matches or default_deployment_matches
    deployments = (app or {}).get("deployments") or {}
    out = {}
    for arm in arms:
        mine = [d for name, d in deployments.items() if matches(arm, name)]
        ready = sum(replica_states(d).get("RUNNING", 0) for d in mine)
        status = next((d.get("status", "") for d in mine if d.get("status") in DEAD_STATUSES),
                      mine[0].get("status", "") if mine else "")
        message = next((d.get("message", "") for d in mine if d.get("status") == status), "")
        out[arm] = ArmStatus(ready, status, message)
    return out


def serve_applied_weights(app: dict | None, route: str) -> dict[str, int] | None:
    """The route's weights the ingress runs: its deployment's user_config once HEALTHY, else None."""
    from corral.serving.app import INGRESS_DEPLOYMENT

    ingress = ((app or {}).get("deployments") or {}).get(INGRESS_DEPLOYMENT)
    if not ingress or ingress.get("status") != "HEALTHY":
        return None
    routes = (((ingress.get("deployment_config") or {}).get("user_config")) or {}).get("routes") or {}
    if route not in routes:
        raise ActuatorError(f"the running ingress has no route {route!r} (routes: {sorted(routes)})")
    return {a: int(w) for a, w in routes[route].items()}


def serve_applied_shadow(app: dict | None, route: str) -> dict[str, Any] | None:
    """The route's shadow setting the ingress runs ({} = none), once its deployment is HEALTHY
    (as for weights, see serve_applied_weights), else None."""
    from corral.serving.app import INGRESS_DEPLOYMENT
    from corral.serving.shadow import applied_shadow

    ingress = ((app or {}).get("deployments") or {}).get(INGRESS_DEPLOYMENT)
    if not ingress or ingress.get("status") != "HEALTHY":
        return None
    return applied_shadow((ingress.get("deployment_config") or {}).get("user_config") or {}, route)


def _apply_shadow(app: dict, route: str, setting: dict[str, Any] | None) -> bool:
    from corral.serving.shadow import set_route_shadow

    try:
        return set_route_shadow(app, route, setting)
    except (KeyError, ValueError) as exc:
        raise ActuatorError(str(exc)) from None


class ServeStatusReader:
    """`GET /api/serve/applications/` on a Ray dashboard (token from RAY_AUTH_TOKEN or ~/.ray/auth_token)."""

    def __init__(self, dashboard_url: str, app_name: str, timeout_s: float = 10.0):
        self.url, self.app_name, self.timeout_s = dashboard_url.rstrip("/"), app_name, timeout_s

    def app(self) -> dict:
        import requests

        from corral.serving.local import ray_auth_headers

        try:
            r = requests.get(f"{self.url}/api/serve/applications/", headers=ray_auth_headers(), timeout=self.timeout_s)
            r.raise_for_status()
            apps = r.json().get("applications") or {}
        except (requests.RequestException, ValueError) as exc:
            raise ActuatorError(f"reading Serve status from {self.url}: {exc}") from exc
        if self.app_name not in apps:
            raise ActuatorError(f"Serve at {self.url} runs no application {self.app_name!r} (has {sorted(apps)})")
        return apps[self.app_name]


# -- KubeRay -------------------------------------------------------------------------------


def fleet_app(serve_config: dict, app_name: str | None) -> dict:
    apps = serve_config.get("applications") or []
    for app in apps:
        if app_name is None or app.get("name") == app_name:
            if "fleet" not in (app.get("args") or {}):
                raise ActuatorError(f"serve application {app.get('name')!r} has no args.fleet")
            return app
    raise ActuatorError(f"no serve application {app_name!r} in serveConfigV2 (have {[a.get('name') for a in apps]})")


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


def default_deployment_matches(arm: str, deployment: str) -> bool:
    """Does a Serve deployment name belong to `arm`? (Serve LLM names deployments after the model id.)"""
    return deployment == arm or deployment.endswith(f":{arm}") or deployment.endswith(f"-{arm}") or \
        deployment.endswith(f":{arm.replace('.', '_')}")


class KubeRayActuator:
    """Route weights and replica floors through the RayService custom resource.

    Writes go to `spec.serveConfigV2`; KubeRay submits it to the Serve controller. Reads come
    from Serve itself, through the Ray dashboard: KubeRay's RayService status carries per
    Serve deployment only `status` and `message`, no replica counts
    (ray-project/kuberay ray-operator/apis/ray/v1/rayservice_types.go, `ServeDeploymentStatus`),
    and nothing says which user_config the ingress runs. The dashboard answers on the
    RayService's head service, `<name>-head-svc` port 8265 (kuberay
    ray-operator/controllers/ray/utils/util.go `GenerateHeadServiceName`: for a RayService
    `<name>-head-svc`, kept pointing at the active cluster across upgrades)."""

    def __init__(self, name: str, namespace: str = "default", app_name: str | None = None, api=None,
                 deployment_matches: Callable[[str, str], bool] = default_deployment_matches,
                 dashboard_url: str | None = None, serve_status=None, retries: int = 5):
        """`api` is a `kubernetes.client.CustomObjectsApi` (default: from kubeconfig / in-cluster).
        `serve_status` has `.app() -> ApplicationDetails dict` (default: a `ServeStatusReader` on
        `dashboard_url`, by default `http://<name>-head-svc.<namespace>.svc:8265`)."""
        if api is None:
            from kubernetes import client, config

            config.load_config()
            api = client.CustomObjectsApi()
        self.api, self.name, self.namespace, self.app_name = api, name, namespace, app_name
        self.deployment_matches, self.retries = deployment_matches, retries
        self.dashboard_url = dashboard_url or default_dashboard_url(name, namespace)
        self._serve_status = serve_status

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

    def _serve_app(self) -> dict:
        if self._serve_status is None:
            app_name = self.app_name or self._fleet(self._get())[1].get("name")
            if not app_name:
                raise ActuatorError("the RayService's fleet has no name, so its Serve application is unknown")
            self._serve_status = ServeStatusReader(self.dashboard_url, app_name)
        return self._serve_status.app()

    def configured_weights(self, route: str) -> dict[str, int]:
        """The weights written in serveConfigV2 (maybe not applied yet)."""
        _, app, _ = self._fleet(self._get())
        return _weights_of(app, route)

    def get_weights(self, route):
        return serve_applied_weights(self._serve_app(), route)

    def arm_status(self, arms):
        return serve_arm_status(self._serve_app(), arms, self.deployment_matches)

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

    def get_shadow(self, route):
        return serve_applied_shadow(self._serve_app(), route)

    def set_shadow(self, route, setting):
        return self._modify(lambda app: _apply_shadow(app, route, setting))


def default_dashboard_url(name: str, namespace: str) -> str:
    return f"http://{name}-head-svc.{namespace}.svc:8265"


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
        import requests

        from corral.serving.local import LocalError

        try:
            return self.cluster.update_app(self.app_name, change)
        except LocalError as exc:
            raise ActuatorError(str(exc)) from None
        except requests.RequestException as exc:
            raise ActuatorError(f"Serve at {self.cluster.api}: {exc}") from exc

    def _app(self) -> dict:
        app = self.cluster.app_status(self.app_name)
        if not app:
            raise ActuatorError(f"no running serve application {self.app_name!r}")
        return app

    def configured_weights(self, route: str) -> dict[str, int]:
        """The weights last submitted (maybe not applied yet)."""
        return _weights_of(self._app().get("deployed_app_config") or {}, route)

    def get_weights(self, route):
        return serve_applied_weights(self._app(), route)

    def set_weights(self, route, weights):
        return self._update(lambda app: _apply_weights(app, route, weights))

    def set_replica_floor(self, arm, floor):
        return self._update(lambda app: _apply_floor(app, arm, floor))

    def arm_status(self, arms):
        return serve_arm_status(self._app(), arms)

    def get_shadow(self, route):
        return serve_applied_shadow(self._app(), route)

    def set_shadow(self, route, setting):
        return self._update(lambda app: _apply_shadow(app, route, setting))
