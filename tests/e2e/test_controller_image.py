"""The controller image's install line, run as written in docker/controller.Dockerfile, in a fresh
virtualenv (no docker engine here): the wheel of this checkout with the `kube` extra, nothing else.
The controller's commands must start from it: `corral rollout run --help` (the Deployment's command)
and the liveness probe's `corral rollout alive --help`, with the kubernetes client and without Ray.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "controller.Dockerfile"


def install_line() -> str:
    """The RUN line after the `# install-line` marker, without its cleanup."""
    lines = DOCKERFILE.read_text().splitlines()
    line = lines[lines.index("# install-line") + 1]
    assert line.startswith("RUN pip install "), line
    return line.removeprefix("RUN ").split(" && ")[0]


@pytest.fixture(scope="module")
def controller_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("controller-image")
    dist = tmp / "dist"
    had_build = (ROOT / "build").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    if not had_build:
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    # The image's line, with the image's wheel folder (/tmp/dist) replaced by ours.
    cmd = install_line().replace("/tmp/dist", str(dist)).replace("pip install", f"{bin_dir}/pip install -q", 1)
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=900, cwd=tmp)
    if proc.returncode != 0 and re.search(r"Could not find a version|connection|resolve", proc.stderr, re.I):
        pytest.skip(f"no package index reachable for the controller's dependencies: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return bin_dir


# Run from an empty folder, as the image does (WORKDIR /tmp): not from the checkout, whose `corral/`
# folder would shadow the installed package.
def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "corral"), *args], capture_output=True, text=True, timeout=120,
                          cwd=bin_dir)


def test_the_image_holds_the_kubernetes_client_and_no_ray(controller_venv):
    py = str(controller_venv / "python")
    ok = subprocess.run([py, "-c", "import kubernetes, corral.rollout.actuators"], capture_output=True, text=True,
                        timeout=120, cwd=controller_venv)
    assert ok.returncode == 0, ok.stderr
    no_ray = subprocess.run([py, "-c", "import ray"], capture_output=True, text=True, timeout=60, cwd=controller_venv)
    assert "No module named 'ray'" in no_ray.stderr


def test_the_controller_command_starts(controller_venv):
    proc = run(controller_venv, "rollout", "run", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--kube" in proc.stdout and "--endpoint" in proc.stdout


def test_the_liveness_command_starts(controller_venv):
    proc = run(controller_venv, "rollout", "alive", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--heartbeat-file" in proc.stdout
