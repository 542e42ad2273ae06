"""Unit tests are pure: they must not start Ray (end-to-end tests in tests/e2e do)."""

import pytest


@pytest.fixture(autouse=True)
def _refuse_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; put this test in tests/e2e")

    monkeypatch.setattr(ray, "init", refuse)
