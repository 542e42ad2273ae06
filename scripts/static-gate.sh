#!/usr/bin/env bash
# The static gate (run by .ci/run before the tests; about a minute):
#   1. ruff on the source tree (rules in pyproject.toml);
#   2. build the wheel and install it (--no-deps --target) into a throwaway folder, where paths equal
#      import names (the source tree maps cluster/ -> corral.cluster, which static tools cannot follow);
#   3. import-linter's layer contracts on that copy, and proof that they bite: the same check on a
#      copy with `import requests` injected into a pure module must fail;
#   4. mypy on that copy: --strict flags on the pure deciders, plain on the rest ([tool.mypy]);
#   5. built-wheel smoke: the wheel installed non-editable into a throwaway venv that reuses this
#      venv's third-party packages; `corral --help`, `corral validate` (demo fleet), `corral plan
#      cluster`, and the packaged dashboards, golden set and latency curves.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-.venv}
PY=$ROOT/$VENV/bin/python
WORK=$(mktemp -d "${TMPDIR:-/tmp}/corral-static-gate.XXXXXX")
# setuptools leaves build/ in the checkout; remove it afterwards only if it was not there before.
if [ -e build ]; then keep_build=1; else keep_build=0; fi
trap 'rm -rf "$WORK"; [ "$keep_build" = 1 ] || rm -rf "$ROOT/build"' EXIT
step() { printf '\033[1m[static-gate]\033[0m %s\n' "$*"; }
t0=$SECONDS

step "ruff check"
"$PY" -m ruff check .

step "build the wheel"
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" . 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
wheel=$(ls "$WORK"/dist/corral-*.whl)
"$PY" -m pip install -q --no-deps --target "$WORK/site" "$wheel"

lint_imports() {  # $1: site folder
  (cd "$WORK" && PYTHONPATH="$1" "$PY" -c "import sys; from importlinter.cli import lint_imports_command; sys.argv = ['lint-imports', '$ROOT/pyproject.toml']; lint_imports_command()")
}
step "import-linter contracts (installed copy)"
lint_imports "$WORK/site"

step "import-linter must fail on a pure module that imports requests"
cp -r "$WORK/site" "$WORK/bad"
printf '\nimport requests  # injected by scripts/static-gate.sh\n' >> "$WORK/bad/corral/serving/split.py"
if lint_imports "$WORK/bad" > "$WORK/bad.log" 2>&1; then
  cat "$WORK/bad.log"; echo "static-gate: lint-imports passed with requests imported by corral.serving.split" >&2; exit 1
fi
grep -q "corral.serving.split -> requests" "$WORK/bad.log" \
  || { cat "$WORK/bad.log"; echo "static-gate: lint-imports failed, but not on the injected import" >&2; exit 1; }
rm -rf "$WORK/bad"

step "mypy (strict on the pure deciders, plain on the rest)"
(cd "$WORK/site" && "$PY" -m mypy --config-file "$ROOT/pyproject.toml" --cache-dir "$WORK/mypy-cache" -p corral)

step "built-wheel smoke (non-editable install in a throwaway venv)"
"$PY" -m venv --without-pip "$WORK/venv"
venv_site=$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Reuse the project venv's third-party packages; the .pth adds their folders only (no editable hook runs).
"$PY" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('site-packages')))" > "$venv_site/_corral_deps.pth"
"$PY" -m pip --python "$WORK/venv/bin/python" install -q --no-deps --no-index "$wheel"
cd "$WORK"  # away from the checkout, so nothing imports from the source tree
SMOKE=$WORK/venv/bin
"$SMOKE/python" - <<'PY'
import corral, sys
where = corral.__file__
assert "/venv/" in where and "site-packages" in where, f"corral imported from {where}, not the installed wheel"
print(f"corral from {where}")
PY
"$SMOKE/corral" --help > /dev/null
"$SMOKE/corral" validate
"$SMOKE/corral" plan cluster --model llama-3-70b --gpu H100-80GB --gpus-per-node 8 --nodes 1 > "$WORK/plan.txt"
grep -q "^best: TP=" "$WORK/plan.txt" || { cat "$WORK/plan.txt"; exit 1; }
"$SMOKE/python" - <<'PY'
import json
from importlib.resources import files

from corral.cluster.dashboards import load_dashboards, panel_queries
from corral.rollout.quality import load_golden, resolve_golden_path

dashboards = load_dashboards()
assert {"fleet", "arm", "rollout"} <= set(dashboards), sorted(dashboards)
assert panel_queries(), "no PromQL in the packaged dashboards"
golden = resolve_golden_path("builtin:llama_basic")
assert golden.is_file() and load_golden(golden), golden
curves = [p for p in files("corral.autoscaler").joinpath("curves").iterdir() if p.name.endswith(".json")]
assert curves and all(json.loads(p.read_text())["batch"] for p in curves), curves
print(f"packaged data: {len(dashboards)} dashboards, golden set {golden.name}, {len(curves)} latency curves")
PY
step "passed in $((SECONDS - t0)) s"
