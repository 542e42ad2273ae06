"""Unit tests are pure: they must not start Ray (end-to-end tests in tests/e2e do).

`ray.init` is replaced by a refusal, but without importing Ray: importing it costs seconds and
most unit tests never need it. If Ray is already imported the refusal is set now; otherwise an
import hook sets it as soon as something imports Ray.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("unit tests must not start Ray; put this test in tests/e2e")


class _RefuseRayInit(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "ray":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_refuse(module: types.ModuleType) -> None:
            exec_module(module)
            module.init = _refuse  # type: ignore[attr-defined]

        loader.exec_module = exec_then_refuse  # type: ignore[method-assign]
        return spec


if "ray" in sys.modules:
    sys.modules["ray"].init = _refuse
else:
    sys.meta_path.insert(0, _RefuseRayInit())
