# The two commands a user needs (README): `make up` and `make test`. Both set up first.
VENV ?= .venv
export HF_HUB_OFFLINE = 1

.PHONY: setup up down test test-fast

setup:
	@scripts/setup.sh

# Serve the embedded demo fleet on this machine (prepares demo models on first run).
up: setup
	$(VENV)/bin/corral up

down:
	$(VENV)/bin/corral down

# The whole suite, end-to-end tests included (what CI runs).
test: setup
	$(VENV)/bin/python -m pytest tests

# Unit tests only: no Ray, no vLLM.
test-fast: setup
	$(VENV)/bin/python -m pytest tests/unit
