# The two commands: `make run` sets everything up and runs the embedded default,
# `make test` runs the whole suite (lint, types, tests). CI calls `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup lint bench clean

run: setup
	$(BIN)/driftlock up

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

setup: $(STAMP)
	@ops/ensure-nats-server.sh
	@# Compile the detectors' loops once (numba keeps them in __pycache__): ~2 min the first
	@# time, ~1 s to load after, instead of in the middle of a node's first batch.
	@$(BIN)/python -c 'from driftlock.detect import Detector; Detector()'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

bench: setup
	$(BIN)/python -m bench.pipeline

clean:
	rm -rf $(VENV) .driftlock .mypy_cache .ruff_cache .pytest_cache
