"""One read-modify-write of a RayService, with its resourceVersion as the precondition.

Both the actuator (serveConfigV2) and the rollout store (an annotation) write the same object
that KubeRay and other controllers also write; a merge patch that carries the resourceVersion
we read is refused with 409 if the object changed meanwhile, and then we read again.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class RayServiceConflict(RuntimeError):
    """The object changed under us on every attempt."""


def patch_rayservice(api, namespace: str, name: str, change: Callable[[dict], tuple[dict | None, T]],
                     retries: int, read: Callable[[], dict] | None = None) -> T:
    """Read the RayService, build `(body, result) = change(obj)`, merge-patch `body` into it.

    `api` is a `kubernetes.client.CustomObjectsApi`; `read` replaces the plain GET (e.g. one that
    translates errors). `body` None means nothing to write (`result` is returned as is). The
    body's `metadata.resourceVersion` is set to the one read. A 409 re-reads and retries, up to
    `retries` attempts; any other `ApiException` from the patch propagates.
    """
    from kubernetes.client.exceptions import ApiException

    for attempt in range(retries):
        obj = read() if read else api.get_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", name)
        body, result = change(obj)
        if body is None:
            return result
        version = (obj.get("metadata") or {}).get("resourceVersion")
        body = {**body, "metadata": {**(body.get("metadata") or {}), "resourceVersion": version}}
        try:
            api.patch_namespaced_custom_object("ray.io", "v1", namespace, "rayservices", name, body)
            return result
        except ApiException as exc:
            if exc.status != 409:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise RayServiceConflict(f"rayservice {namespace}/{name} kept changing under us ({retries} attempts)")
