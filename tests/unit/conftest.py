"""Unit tests are pure: they must not start Ray (end-to-end tests in tests/e2e do).

While a test under tests/unit sets up, runs or tears down, `ray.init` refuses. The guard is
installed without importing Ray (importing it costs seconds and most unit tests never need it):
if Ray is already imported it is wrapped now, otherwise an import hook wraps it as soon as
something imports Ray. It only bites inside unit tests: `pytest tests` also runs tests/e2e in
the same process, and those start Ray on purpose. pytest calls the `pytest_runtest_*` hooks of
a conftest only for tests in its own directory, so the switch below never flips for e2e tests.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_in_unit_test = False


def _guard(init: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(init, "_corral_guarded", False):
        return init

    @functools.wraps(init)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _in_unit_test:
            raise RuntimeError("unit tests must not start Ray; put this test in tests/e2e")
        return init(*args, **kwargs)

    guarded._corral_guarded = True  # type: ignore[attr-defined]
    return guarded


class _GuardRayInit(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "ray":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_guard(module: types.ModuleType) -> None:
            exec_module(module)
            module.init = _guard(module.init)  # type: ignore[attr-defined]

        loader.exec_module = exec_then_guard  # type: ignore[method-assign]
        return spec


if "ray" in sys.modules:
    sys.modules["ray"].init = _guard(sys.modules["ray"].init)
elif not any(isinstance(f, _GuardRayInit) for f in sys.meta_path):
    sys.meta_path.insert(0, _GuardRayInit())


def _unit_phase() -> Iterator[None]:
    global _in_unit_test
    _in_unit_test = True
    try:
        yield
    finally:
        _in_unit_test = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from _unit_phase()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from _unit_phase()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield from _unit_phase()
