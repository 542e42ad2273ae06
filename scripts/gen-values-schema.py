#!/usr/bin/env python3
"""Regenerate helm/corral/values.schema.json.

The `fleet` value is the fleet spec itself, so its schema comes from the pydantic model
(`FleetSpec.model_json_schema()`): the chart and `corral validate` share one schema. The rest
of the chart's values are described below. Run after changing the fleet spec or values.yaml:

    python scripts/gen-values-schema.py          # rewrite the file
    python scripts/gen-values-schema.py --check  # exit 1 if the committed file is stale

tests/unit/test_helm_chart.py fails while the committed schema differs from the generated one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "helm" / "corral" / "values.schema.json"
# The spec defaults the chart's templates need to build the Serve config's per-deployment overrides
# (Helm's .Files cannot read values.schema.json). Generated from the same pydantic models.
DEFAULTS_PATH = SCHEMA_PATH.parent / "files" / "spec-defaults.json"

K8S_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
ANY_LIST = {"type": "array", "items": {"type": "object"}}


def obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A closed object: unknown keys are typos, rejected like in the fleet spec."""
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


def s(description: str, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **kw}


def chart_schema() -> dict[str, Any]:
    worker_group = obj({
        "name": {**K8S_NAME, "description": "Worker group name."},
        "replicas": {"type": "integer", "minimum": 0, "description": "Nodes at install."},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "gpusPerNode": {"type": "integer", "minimum": 1, "description": "nvidia.com/gpu per worker pod."},
        "cpu": {**QUANTITY, "description": "CPU per worker pod (string quantity, e.g. \"64\")."},
        "memory": {**QUANTITY, "description": "Memory per worker pod (e.g. 512Gi)."},
        "shmSize": {**QUANTITY, "description": "/dev/shm size."},
        "nodeSelector": STR_MAP,
        "tolerations": ANY_LIST,
        "rayStartParams": {**STR_MAP, "description": "`ray start` parameters (strings); num-gpus defaults to gpusPerNode."},
        "resources": {"type": "object", "additionalProperties": QUANTITY,
                      "description": "Extra resources (requests = limits), e.g. rdma/ib."},
        "env": ANY_LIST,
        "envFrom": ANY_LIST,
        "volumes": ANY_LIST,
        "volumeMounts": ANY_LIST,
        "annotations": STR_MAP,
    }, required=["name", "replicas", "minReplicas", "maxReplicas", "gpusPerNode", "cpu", "memory"])
    return obj({
        "nameOverride": s("Chart name override."),
        "fullnameOverride": s("Full name override."),
        "image": obj({"repository": s("Image repository.", minLength=1), "tag": s("Image tag.", minLength=1),
                      "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}, ["repository", "tag"]),
        "imagePullSecrets": ANY_LIST,
        "rayVersion": s("Ray version of the image.", pattern=r"^\d+\.\d+\.\d+$"),
        "fleet": {"$ref": "#/$defs/FleetSpec", "description": "The corral fleet spec (same schema as a fleet YAML)."},
        "head": obj({"cpu": QUANTITY, "memory": QUANTITY, "nodeSelector": STR_MAP, "tolerations": ANY_LIST,
                     "rayStartParams": STR_MAP}),
        "rayService": obj({"upgradeStrategy": {"enum": ["NewCluster", "None"]}, "keepLiveWeights": {"type": "boolean"}}),
        "workerGroups": {"type": "array", "minItems": 1, "items": worker_group},
        "workers": obj({"env": ANY_LIST, "envFrom": ANY_LIST, "volumes": ANY_LIST, "volumeMounts": ANY_LIST,
                        "engineReadyTimeoutS": {"type": "integer", "minimum": 60},
                        "localCacheSize": QUANTITY, "disruptionBudget": {"type": "boolean"}}),
        "hfToken": obj({"existingSecret": s("Secret with the HF token."), "key": s("Key in that Secret.", minLength=1)}),
        "modelCache": obj({"enabled": {"type": "boolean"}, "mountPath": s("Mount path.", pattern="^/"),
                           "existingClaim": s("Existing PVC."), "size": QUANTITY, "storageClass": s("StorageClass."),
                           "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
                           "offline": {"type": "boolean"}}),
        "rolloutController": obj({"enabled": {"type": "boolean"},
                                  "image": obj({"repository": s("Controller image.", minLength=1), "tag": s("Tag.", minLength=1)}),
                                  "args": {"type": "array", "items": {"type": "string"}},
                                  "heartbeatMaxAgeS": {"type": "integer", "minimum": 10},
                                  "prometheusUrl": s("Prometheus URL.", pattern="^https?://"),
                                  "cpu": QUANTITY, "memory": QUANTITY}),
        "rolloutOperators": ANY_LIST,
        "apiKeys": obj({"enabled": {"type": "boolean"}, "allowUnauthenticated": {"type": "boolean"},
                        "create": {"type": "boolean"}, "existingSecret": s("Existing Secret."), "keys": s("Comma-separated keys.")}),
        "ingress": obj({"enabled": {"type": "boolean"}, "className": s("IngressClass."), "host": s("Host."),
                        "tlsSecret": s("TLS Secret."), "annotations": STR_MAP}),
        "httpRoute": obj({"enabled": {"type": "boolean"}, "parentRefs": ANY_LIST,
                          "hostnames": {"type": "array", "items": {"type": "string"}}}),
        "metrics": obj({"enabled": {"type": "boolean"}}),
        "serviceMonitor": obj({"enabled": {"type": "boolean"}, "interval": s("Scrape interval.", pattern=r"^[0-9]+(ms|s|m|h)$"),
                               "labels": STR_MAP}),
        "prometheusRule": obj({"enabled": {"type": "boolean"},
                               "availabilityObjective": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                               "rolloutFailedExpr": s("PromQL (\"\" = no rollout alert)."), "labels": STR_MAP,
                               "fleetDownForM": {"type": "integer", "minimum": 1}}),
        "dashboards": obj({"enabled": {"type": "boolean"}, "label": s("Sidecar label."), "labelValue": s("Label value."),
                           "folder": s("Grafana folder.")}),
        "networkPolicy": obj({"enabled": {"type": "boolean"}, "kuberayOperatorNamespace": K8S_NAME,
                              "monitoringNamespace": K8S_NAME, "endpointFrom": ANY_LIST}),
        "podSecurityContext": {"type": "object"},
        "containerSecurityContext": {"type": "object"},
        "tests": obj({"image": s("helm test image.", minLength=1), "waitS": {"type": "integer", "minimum": 0}}),
        "global": {"type": "object"},
    }, required=["image", "fleet", "workerGroups"])


def generate() -> dict[str, Any]:
    from corral.cluster.spec import FleetSpec

    fleet = FleetSpec.model_json_schema()
    defs = fleet.pop("$defs", {})
    defs["FleetSpec"] = fleet
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "corral chart values"}
    schema.update(chart_schema())
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def render() -> str:
    return json.dumps(generate(), indent=2, sort_keys=False) + "\n"


def spec_defaults() -> dict[str, Any]:
    from corral.cluster.spec import Arm
    from corral.cluster.spec.autoscaling import POLICY_IMPORT_PATH, AutoscalingSpec

    arm = Arm.model_validate({"name": "x", "model": {"hf": "x/y"}})
    return {
        "autoscaling": AutoscalingSpec().model_dump(mode="json"),
        "max_num_seqs": arm.engine.max_num_seqs,
        "replicas": {"min": arm.replicas.min, "max": arm.replicas.max},
        "policy_import_path": POLICY_IMPORT_PATH,
    }


def render_defaults() -> str:
    return json.dumps(spec_defaults(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed schema is stale")
    args = ap.parse_args()
    outputs = {SCHEMA_PATH: render(), DEFAULTS_PATH: render_defaults()}
    if args.check:
        stale = [str(p) for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p} is stale: run python scripts/gen-values-schema.py", file=sys.stderr)
        return 1 if stale else 0
    for p, text in outputs.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
