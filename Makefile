# The two commands a user needs (README): `make up` and `make test`. Both set up first.
VENV ?= .venv
export HF_HUB_OFFLINE = 1

.PHONY: setup up down test test-fast test-migration static

setup:
	@scripts/setup.sh

# Serve the embedded demo fleet on this machine (prepares demo models on first run).
up: setup
	$(VENV)/bin/corral up

down:
	$(VENV)/bin/corral down

# The whole suite, end-to-end tests included (what CI runs after `make static`: .ci/run).
test: setup
	$(VENV)/bin/python -m pytest tests -m "not migration" --durations=15

# The migration demo end to end (tests/e2e/test_migration.py: deploys its own fleets, ~15 min).
test-migration: setup
	$(VENV)/bin/python -m pytest tests/e2e/test_migration.py -m migration

# Unit tests only: no Ray cluster starts (tests/unit/conftest.py refuses ray.init) and no engine runs.
# 18 of the 25 test files import neither Ray nor vLLM. These import Ray because their module under test
# is built on it: test_app, test_autoscaler_policy (Serve's policy loader), test_benchmark_harness (Serve's
# config schema), test_simulator (Serve's controller functions); these also import vLLM through Ray Serve
# LLM: test_llm_server_signals, test_router_timing, test_ray_compat.
test-fast: setup
	$(VENV)/bin/python -m pytest tests/unit

# The static gate: ruff, import-linter and mypy on the built wheel, and the built-wheel smoke test.
static: setup
	scripts/static-gate.sh
