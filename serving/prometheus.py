"""A local Prometheus that scrapes Ray's metrics (the Debian `prometheus` package).

Ray writes the metrics endpoints of every node into a file-based service discovery file;
the generated config points Prometheus at it, so per-arm series recorded by the ingress and
vLLM's engine metrics are scraped without further setup.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"


def config_text(scrape_interval_s: float = 5.0, sd_file: str = RAY_SD_FILE) -> str:
    return (
        "global:\n"
        f"  scrape_interval: {scrape_interval_s:g}s\n"
        f"  evaluation_interval: {scrape_interval_s:g}s\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        "    file_sd_configs:\n"
        f"      - files: ['{sd_file}']\n"
        "        refresh_interval: 5s\n"
    )


class PrometheusError(RuntimeError):
    """Prometheus could not answer (unreachable, HTTP error, query error, unexpected shape)."""


def _finite(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


_CORRAL_SELECTOR = re.compile(r"\b(ray_(?:corral|serve)_[A-Za-z0-9_]*)\{")


def scope_query(promql: str, scope: dict[str, str]) -> str:
    """`promql` with `scope`'s label matchers added to every selector of a corral or Serve series
    (`ray_corral_…{…}`, `ray_serve_…{…}`; corral's own queries always write selectors in braces).
    A query that names a series without braces is left as written."""
    if not scope:
        return promql
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(scope.items()))
    return _CORRAL_SELECTOR.sub(lambda m: f"{m.group(1)}{{{matchers},", promql).replace(",}", "}")


def parse_scope(text: str) -> dict[str, str]:
    """`namespace=llm,service=x-metrics` -> {"namespace": "llm", "service": "x-metrics"}; "" -> {}."""
    scope: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()) or '"' in value:
            raise ValueError(f"label matcher {part!r}: expected NAME=VALUE")
        scope[name.strip()] = value.strip()
    return scope


class PrometheusClient:
    """The one client of Prometheus' query HTTP API (`GET /api/v1/query`, `/api/v1/query_range`) in corral."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, session: requests.Session | None = None,
                 scope: dict[str, str] | None = None):
        """`scope`: label matchers added to every corral series in every query (see `scope_query`),
        e.g. `{"namespace": "llm"}` so that two releases in one Prometheus never mix."""
        self.base_url = base_url.rstrip("/")
        self.scope = dict(scope or {})
        self.timeout_s = timeout_s
        self._session = session or requests.Session()

    def _data(self, promql: str, at: float | None = None, path: str = "query", extra: dict | None = None) -> dict:
        params = {"query": scope_query(promql, self.scope), **({"time": f"{at:.3f}"} if at is not None else {}), **(extra or {})}
        try:
            resp = self._session.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise PrometheusError(f"Prometheus at {self.base_url} unreachable: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(f"Prometheus answered HTTP {resp.status_code} with a non-JSON body") from None
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus query failed (HTTP {resp.status_code}, {body.get('errorType')}: {body.get('error')}): {promql}"
            )
        return body.get("data", {})

    def vector(self, promql: str, at: float | None = None) -> list[dict]:
        """Every sample of an instant query (`[{"metric": {...}, "value": [t, "v"]}, ...]`),
        evaluated now or at unix time `at`."""
        data = self._data(promql, at)
        if data.get("resultType") != "vector":
            raise PrometheusError(f"query returned a {data.get('resultType')}, expected a vector: {promql}")
        return list(data.get("result") or [])

    def matrix(self, promql: str, start: float, end: float, step_s: float) -> list[dict]:
        """A range query (`GET /api/v1/query_range`): `[{"metric": {...}, "values": [[t, "v"], ...]}, ...]`."""
        data = self._data(promql, path="query_range",
                          extra={"start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"})
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"query_range returned a {data.get('resultType')}, expected a matrix: {promql}")
        return list(data.get("result") or [])

    def query(self, promql: str, at: float | None = None) -> float | None:
        """The value of a query that yields at most one sample; None if it yields none or NaN."""
        data = self._data(promql, at)
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar" and result is not None:
            return _finite(float(result[1]))
        if kind != "vector":
            raise PrometheusError(f"query returned a {kind}, expected a vector: {promql}")
        if not result:
            return None
        if len(result) > 1:
            labels = [r.get("metric") for r in result]
            raise PrometheusError(f"query returned {len(result)} series {labels}, expected one: {promql}")
        return _finite(float(result[0]["value"][1]))


@dataclass
class LocalPrometheus:
    """A Prometheus process owned by corral, with its config and data under `workdir`."""

    workdir: Path
    port: int = 9090
    scrape_interval_s: float = 5.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "prometheus.pid"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def running(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).ok
        except requests.RequestException:
            return False

    def start(self, timeout_s: float = 180) -> None:
        """Start Prometheus and wait until it is ready (a restart replays the WAL first: that
        took from 2.5 s on an idle 2-core machine to 3 min on the same machine serving a fleet
        under load, with a day of data)."""
        binary = self.binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian package `prometheus`; scripts/setup.sh installs it)")
        if self.running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(config_text(self.scrape_interval_s))
        log = (self.workdir / "prometheus.log").open("ab")
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=2d"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # outlives `corral up`
        )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while not self.running():
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {proc.returncode}; see {self.workdir / 'prometheus.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready in {timeout_s:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if not self.pid_file.exists():
            return
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # wait, so that a start() right after works
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                        break
                except ChildProcessError:
                    pass  # started by another process (e.g. an earlier `corral up`)
                os.kill(pid, 0)
                time.sleep(0.2)
        except (ProcessLookupError, ValueError):
            pass
        self.pid_file.unlink(missing_ok=True)

    def query(self, promql: str) -> list[dict]:
        """The raw result vector of an instant query."""
        return PrometheusClient(self.url).vector(promql)
