"""Fleet spec models and loading. `load_fleet` is the one entry point for a fleet file."""

from corral.cluster.spec.admission import AdmissionSpec, FailoverSpec, RouteLimits
from corral.cluster.spec.fleet import (
    API_VERSION,
    Arm,
    ClusterSpec,
    EngineArgs,
    FleetSpec,
    ModelSource,
    Placement,
    Replicas,
    Route,
    RouteArm,
    ServerSpec,
)
from corral.cluster.spec.loader import SpecError, default_fleet_path, load_fleet, parse_fleet

__all__ = [
    "AdmissionSpec",
    "FailoverSpec",
    "RouteLimits",
    "API_VERSION",
    "Arm",
    "ClusterSpec",
    "EngineArgs",
    "FleetSpec",
    "ModelSource",
    "Placement",
    "Replicas",
    "Route",
    "RouteArm",
    "ServerSpec",
    "SpecError",
    "default_fleet_path",
    "load_fleet",
    "parse_fleet",
]
