"""Run a fleet on this machine: apply it (validate, prepare models, start Ray, deploy, wait) and stop it.

These are the application functions behind `corral up` / `corral down`, also used by the
end-to-end tests and the benchmarks. They raise domain errors (`SpecError` for a bad fleet,
`LocalError` for the environment or a failed deploy); the CLI turns those into exit codes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from corral.cluster.spec import FleetSpec, load_fleet


def apply_fleet(path: str | Path | None, timeout_s: float = 900, prometheus: bool = True,
                say: Callable[[str], None] = print) -> FleetSpec:
    """Validate, prepare models, start Ray if needed, deploy or update in place, wait until healthy,
    start the local Prometheus (unless `prometheus` is False; a missing Prometheus is reported, not fatal).

    Nothing is deployed from an invalid spec: validation and model checks come first.
    Returns the FleetSpec that is now running. `path` None = the embedded demo fleet.
    """
    from corral.serving.local import (
        LocalCluster,
        cpu_dtype_check,
        memory_check,
        parallelism_check,
        prepare_models,
    )
    from corral.serving.prometheus import LocalPrometheus

    fleet = load_fleet(None if path is None else str(path), check_paths=True)
    cluster = LocalCluster()
    prepare_models(fleet, say)
    parallelism_check(fleet, cluster.home, say)
    cpu_dtype_check(fleet, say=say)
    memory_check(fleet, running=cluster.ray_running() and cluster.app_status(fleet.name) is not None)
    if cluster.start_ray(fleet):
        say("started a local Ray head")
    else:
        say("reusing the running Ray head")
    cluster.deploy(fleet)
    cluster.wait_healthy(fleet, timeout_s, say)
    if prometheus:
        prom = LocalPrometheus(cluster.home / "prometheus")
        try:
            prom.start()
            say(f"Prometheus: {prom.url} (scraping Ray metrics on :{fleet.server.metrics_port})")
        except (FileNotFoundError, RuntimeError) as exc:
            say(f"Prometheus not started: {exc}")
    return fleet


def stop_fleet() -> None:
    """Delete the running fleet's Serve applications, stop the local Ray head and Prometheus
    (each only if running)."""
    from corral.serving.local import LocalCluster
    from corral.serving.prometheus import LocalPrometheus

    cluster = LocalCluster()
    if cluster.ray_running():
        cluster.delete_apps()
    cluster.stop_ray()
    LocalPrometheus(cluster.home / "prometheus").stop()
