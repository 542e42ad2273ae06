"""Running a fleet on this machine: a local Ray head, Serve's REST API, health polling.

Everything here is I/O at the edge. Deploys go through the Ray dashboard's Serve REST API
(`PUT /api/serve/applications/`), the same declarative path as `serve deploy` and KubeRay:
re-applying a changed fleet updates it in place (route weights become a user_config change,
which Serve applies without restarting replicas).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from corral.cluster.models import ModelError, corral_home, prepare, verify
from corral.cluster.spec import FleetSpec
from corral.serving import _ray_compat
from corral.serving.app import serve_config

DASHBOARD_PORT = 8265
# Logical CPUs for the local head: engine workers, LLMServer replicas and the ingress each
# reserve CPUs, while the real cores are shared anyway (see DEVELOPERS notes on vLLM CPU).
LOCAL_NUM_CPUS = 32


class LocalError(RuntimeError):
    """A problem with the local environment; `code` is the CLI exit code (3 = environment)."""

    def __init__(self, message: str, code: int = 3):
        super().__init__(message)
        self.code = code


def ray_auth_headers() -> dict[str, str]:
    """Ray 2.60 protects the dashboard with a token once one exists (~/.ray/auth_token)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.is_file() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class LocalCluster:
    """Handle on the local Ray head and its Serve instance."""

    dashboard_port: int = DASHBOARD_PORT
    home: Path = field(default_factory=corral_home)

    def _http(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**ray_auth_headers(), **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.api}{path}", headers=headers, **kwargs)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- Ray head --------------------------------------------------------------------------

    def ray_running(self) -> bool:
        try:
            return self._http("GET", "/api/version", timeout=2).ok
        except requests.RequestException:
            return False

    def start_ray(self, fleet: FleetSpec) -> bool:
        """Start a Ray head unless one is up. Returns True if this call started it."""
        if self.ray_running():
            self._check_existing(fleet)
            return False
        if _port_busy(self.dashboard_port):
            raise LocalError(f"port {self.dashboard_port} (Ray dashboard) is in use by another program")
        if _port_busy(fleet.server.metrics_port):
            raise LocalError(f"port {fleet.server.metrics_port} (server.metrics_port) is in use by another program")
        cmd = [
            _ray_bin(), "start", "--head", f"--num-cpus={LOCAL_NUM_CPUS}", "--num-gpus=0",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--metrics-export-port={fleet.server.metrics_port}", "--disable-usage-stats",
        ]
        # Ray keeps up to num_cpus idle workers (~0.7 GB each with vLLM imported); with the
        # generous logical CPU count above that would eat most of a small machine's memory.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_num_workers_soft_limit": "2", "RAY_prestart_worker_first_driver": "0"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-8:])
            if "already" in tail.lower():
                raise LocalError(f"Ray is already running on this machine with other settings:\n{tail}\nstop it with `ray stop` or `corral down`")
            raise LocalError(f"`ray start` failed:\n{tail}")
        deadline = time.monotonic() + 60
        while not self.ray_running():
            if time.monotonic() > deadline:
                raise LocalError("Ray started but its dashboard did not answer within 60 s")
            time.sleep(1)
        return True

    def _check_existing(self, fleet: FleetSpec) -> None:
        """A Ray head is already up: refuse to deploy over one with incompatible settings."""
        status = self.serve_status()
        http = (status or {}).get("http_options") or {}
        port = http.get("port")
        apps = (status or {}).get("applications") or {}
        if apps and port and int(port) != fleet.server.port:
            raise LocalError(
                f"Ray is already running with Serve on port {port}, but the fleet asks for "
                f"server.port={fleet.server.port}; run `corral down` first"
            )

    def stop_ray(self) -> None:
        subprocess.run([_ray_bin(), "stop", "--force"], capture_output=True, text=True)

    # -- Serve -----------------------------------------------------------------------------

    def serve_status(self) -> dict[str, Any] | None:
        try:
            r = self._http("GET", "/api/serve/applications/", timeout=10)
        except requests.RequestException:
            return None
        return r.json() if r.ok else None

    def deploy(self, fleet: FleetSpec) -> None:
        """Apply the fleet declaratively (create, or update in place)."""
        status = self.serve_status() or {}
        running_port = ((status.get("http_options") or {}).get("port"))
        if not status.get("applications") and _port_busy(fleet.server.port, fleet.server.host) and running_port != fleet.server.port:
            raise LocalError(f"port {fleet.server.port} (server.port) is in use by another program")
        config = serve_config(fleet, self.home)
        config["http_options"] = {"host": fleet.server.host, "port": fleet.server.port}
        r = self._http("PUT", "/api/serve/applications/", json=config, timeout=60)
        if not r.ok:
            raise LocalError(f"Serve rejected the deploy ({r.status_code}): {r.text[:2000]}", code=1)

    def update_app(self, name: str, change: Callable[[dict[str, Any]], bool]) -> bool:
        """Apply `change` (False = nothing to do) to the running app's config and re-deploy it.

        Used for live knobs kept in per-deployment overrides (weights, floors, keys), which
        Serve applies in place."""
        status = self.serve_status()
        if status is None:
            raise LocalError(f"no Ray dashboard answers at {self.api}")
        app = (status.get("applications") or {}).get(name)
        if not app or not app.get("deployed_app_config"):
            raise LocalError(f"no running serve application {name!r}")
        config: dict[str, Any] = {"applications": [copy.deepcopy(app["deployed_app_config"])]}
        http = status.get("http_options") or {}
        if http:
            config["http_options"] = {"host": http.get("host"), "port": http.get("port")}
        if not change(config["applications"][0]):
            return False
        r = self._http("PUT", "/api/serve/applications/", json=config, timeout=60)
        if not r.ok:
            raise LocalError(f"Serve rejected the update ({r.status_code}): {r.text[:500]}", code=1)
        return True

    def app_status(self, name: str) -> dict[str, Any] | None:
        return ((self.serve_status() or {}).get("applications") or {}).get(name)

    def wait_healthy(self, fleet: FleetSpec, timeout_s: float, on_progress: Callable[[str], None]) -> None:
        """Poll until the application is RUNNING; raise with Serve's own message on failure."""
        deadline = time.monotonic() + timeout_s
        while True:
            app = self.app_status(fleet.name)
            if app:
                state = app.get("status")
                deployments = app.get("deployments") or {}
                on_progress(_describe(state, deployments))
                if state == "RUNNING":
                    return
                if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise LocalError(_failure_message(app), code=1)
            if time.monotonic() > deadline:
                raise LocalError(f"fleet {fleet.name!r} not healthy after {timeout_s:.0f} s; see `corral status` and the Ray logs in /tmp/ray/session_latest/logs", code=1)
            time.sleep(2)

    def delete_apps(self) -> None:
        try:
            self._http("DELETE", "/api/serve/applications/", timeout=60)
        except requests.RequestException:
            pass


def prepare_models(fleet: FleetSpec, say: Callable[[str], None]) -> None:
    """Build missing demo models and verify checksums of every demo model the fleet uses."""
    for name in sorted({a.model.demo for a in fleet.arms if a.model.demo}):
        def prefixed(msg: str, n: str = name) -> None:
            say(f"{n}: {msg}")

        path = prepare(name, say=prefixed)
        try:
            verify(path)
        except ModelError as exc:
            raise LocalError(str(exc)) from None


def parallelism_check(fleet: FleetSpec, home: Path | None = None,
                      say: Callable[[str], None] | None = None) -> list[str]:
    """Refuse tensor parallel sizes the model's heads cannot be split by (vLLM would fail late).

    Reads each arm's `config.json`. A `hf:` arm has none before vLLM downloads it when its engine
    starts, so it cannot be checked here: that is said (through `say`) and returned, not skipped
    silently. Such an arm is then checked by vLLM itself when its engine starts
    (`vllm/config/model.py` `ModelConfig.verify_with_parallel_config`: "Total number of attention
    heads (N) must be divisible by tensor parallel size (T)"), and the deployment fails with that
    error instead of this one.
    """
    from corral.serving.app import model_source

    unchecked = []
    for arm in fleet.arms:
        tp = arm.engine.tensor_parallel_size
        config_path = Path(model_source(arm, home)) / "config.json"
        if tp == 1:
            continue
        if not config_path.is_file():
            note = (f"arms[{arm.name}].engine.tensor_parallel_size={tp} not checked against the model's heads: "
                    f"{config_path} does not exist yet (downloaded when the engine starts); vLLM refuses a TP "
                    "that does not divide the attention heads when the engine starts")
            unchecked.append(note)
            if say is not None:
                say(note)
            continue
        config = json.loads(config_path.read_text())
        heads = config.get("num_attention_heads")
        kv_heads = config.get("num_key_value_heads", heads)
        bad = [f"{label}={n}" for label, n in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)) if n and n % tp]
        if bad:
            raise LocalError(
                f"arms[{arm.name}].engine.tensor_parallel_size={tp} does not divide the model's {', '.join(bad)}",
                code=2,
            )
    return unchecked


def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (Linux `/proc/cpuinfo`); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def amx_tiles() -> bool:
    """Whether vLLM's CPU attention takes its AMX kernel on this machine: torch's own check (what
    vLLM asks, `_ray_compat.torch_amx_tile_supported`), else the CPU's `amx_tile` flag."""
    usable = _ray_compat.torch_amx_tile_supported()
    return "amx_tile" in cpu_flags() if usable is None else usable


def cpu_dtype_check(fleet: FleetSpec, amx: Callable[[], bool] = amx_tiles,
                    say: Callable[[str], None] | None = None) -> list[str]:
    """Warn about CPU arms that vLLM would run through its AMX attention kernel.

    On device=cpu, vLLM 0.32 computes attention with its AMX kernel whenever the dtype is bfloat16
    (`auto` is bfloat16 on CPU) and the CPU has AMX tiles (vllm/v1/attention/backends/cpu_attn.py
    `_get_attn_isa`: `supports_amx and dtype in (torch.bfloat16,) and block_size % 32 == 0`). On a
    CPU with AMX that kernel gave SmolLM2-135M wrong answers at temperature 0 ("What is the capital
    of France?" -> "L'Etoile, la Marseillaise, ..."), where the same weights answer "Paris" in
    vLLM with float32 and in transformers with bfloat16. Warned, not refused: the answers are
    still served, and other models may be right. `amx` (asked only when a CPU arm is bf16 or
    `auto`) says whether vLLM would take that kernel here."""
    arms = [arm for arm in fleet.arms if arm.engine.dtype in ("auto", "bfloat16")]
    if fleet.cluster.device != "cpu" or not arms or not amx():
        return []
    notes = [f"arms[{arm.name}].engine.dtype={arm.engine.dtype}: on this CPU (AMX) vLLM's CPU attention takes its "
             "AMX kernel for bfloat16, which gave SmolLM2 wrong answers; dtype float32 avoids it" for arm in arms]
    if say is not None:
        for note in notes:
            say(f"warning: {note}")
    return notes


def memory_check(fleet: FleetSpec, running: bool = False) -> None:
    """Refuse a new CPU fleet whose KV caches alone exceed free memory (vLLM would be OOM-killed).
    An update of a running fleet is not checked: its engines already hold their memory."""
    if fleet.cluster.device != "cpu" or running:
        return
    need_gib = sum(a.replicas.start * max(1, round(fleet.cluster.cpu_kvcache_gib)) for a in fleet.arms)
    avail_gib = _available_memory_gib()
    if avail_gib is not None and need_gib > 0.8 * avail_gib:
        raise LocalError(
            f"the fleet needs about {need_gib} GiB of KV cache ({sum(a.replicas.start for a in fleet.arms)} replicas x "
            f"cluster.cpu_kvcache_gib={fleet.cluster.cpu_kvcache_gib}) but only {avail_gib:.1f} GiB is available; "
            "lower cpu_kvcache_gib or replicas"
        )


def _available_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _describe(state: str | None, deployments: dict[str, Any]) -> str:
    parts = []
    for name, d in deployments.items():
        states = replica_states(d)
        running = states.get("RUNNING", 0)
        total = d.get("target_num_replicas", sum(states.values()))
        parts.append(f"{name.split(':')[-1]} {d.get('status', '?').lower()} {running}/{total}")
    return f"{(state or '?').lower()}: " + ", ".join(parts) if parts else (state or "?").lower()


def replica_states(deployment: dict[str, Any]) -> dict[str, int]:
    """Replica counts by state, from one deployment of Serve's REST status."""
    counts: dict[str, int] = {}
    for replica in deployment.get("replicas") or []:
        counts[replica["state"]] = counts.get(replica["state"], 0) + 1
    return counts


def _failure_message(app: dict[str, Any]) -> str:
    lines = [f"deploy failed: {app.get('message') or app.get('status')}"]
    for name, d in (app.get("deployments") or {}).items():
        if d.get("status") not in ("HEALTHY", None):
            lines.append(f"  {name}: {d.get('status')} {d.get('message', '')[:1500]}")
    text = "\n".join(lines)
    if "out of memory" in text.lower() or "oom" in text.lower():
        text += "\nhint: the engine ran out of memory; lower cluster.cpu_kvcache_gib or engine.max_model_len"
    return text


def _port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host if host not in ("0.0.0.0", "") else "127.0.0.1", port)) == 0


def _ray_bin() -> str:
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")
