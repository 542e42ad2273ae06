"""End-to-end fixtures: one real fleet (Ray + Serve LLM + vLLM on CPU) for the whole session.

The fleet is tests/e2e/fleets/ab.yaml, deployed through the same code path as `corral up`.
It takes over this machine's local Ray head: the deploy replaces any running corral fleet
(an identical e2e fleet that is already running is reused as is), and the session ends with
`corral down` unless CORRAL_E2E_KEEP=1.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

FLEET_FILE = Path(__file__).parent / "fleets" / "ab.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "stops_fleet: stops the session's fleet (`corral down`); runs last")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)
    # A test that stops the fleet runs after every other one (stable order otherwise).
    items.sort(key=lambda item: item.get_closest_marker("stops_fleet") is not None)


@pytest.fixture(scope="session")
def fleet():
    from corral.serving.fleet_ops import apply_fleet, stop_fleet

    spec = apply_fleet(str(FLEET_FILE), timeout_s=1200, prometheus=True, say=lambda m: print(f"[fleet] {m}", flush=True))
    yield spec
    if not os.environ.get("CORRAL_E2E_KEEP"):
        stop_fleet()


@pytest.fixture(scope="session")
def fleet_url(fleet) -> str:
    return f"http://127.0.0.1:{fleet.server.port}"


@pytest.fixture(scope="session")
def prometheus_url(fleet) -> str:
    from corral.serving.local import LocalCluster
    from corral.serving.prometheus import LocalPrometheus

    prom = LocalPrometheus(LocalCluster().home / "prometheus")
    if not prom.running():
        pytest.fail("Prometheus is not running: install the Debian package `prometheus` (scripts/setup.sh does)")
    return prom.url


@pytest.fixture(scope="session")
def openai_client(fleet_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet_url}/v1", api_key="unused", max_retries=0, timeout=120)


def ray_log_files(glob_filter: str = "**/*") -> dict[str, str]:
    """{name: text} of the Ray session's log files matching `glob_filter` (relative to the session's
    logs directory), read through Ray's State API (`ray.util.state.list_logs` / `get_log`), so the
    session directory is wherever Ray put it, not an assumed /tmp/ray/session_latest."""
    from ray.util.state import get_log, list_logs, list_nodes

    out = {}
    for node in list_nodes(address="auto", filters=[("state", "=", "ALIVE")]):
        for names in list_logs(address="auto", node_id=node.node_id, glob_filter=glob_filter).values():
            for name in names:
                if name.endswith("/"):
                    continue  # a directory
                out[name] = "\n".join(get_log(address="auto", node_id=node.node_id, filename=name, tail=-1,
                                              errors="replace"))
    return out


def wait_for(condition, cap_s: float, what: str, poll_s: float = 0.5):
    """Poll `condition` until it is truthy and return its value; fail with `what` after `cap_s`
    (a generous cap on two shared cores, not a timing claim)."""
    deadline = time.monotonic() + cap_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {cap_s:g}s: {what}")
        time.sleep(poll_s)


class BackgroundLoad:
    """Requests sent from background threads while a test watches the fleet; a subclass's
    `_run(k)` is thread k's loop and returns once `self._stop` is set. Used as a context manager:
    the threads start on entry and are stopped and joined on exit (a thread still running after
    `join_timeout_s` fails the test)."""

    join_timeout_s = 150.0

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def _run(self, k: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.join_timeout_s)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"
