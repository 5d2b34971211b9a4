# Developer entry points. Every target creates .venv and installs the project when needed.
#   make smoke   end-to-end smoke reproduction (teacher answers -> lambda=0 / ULD students -> table + plot)
#   make test    the default test suite (unit + integration, offline, CPU)
#   make test-ci     multi-process tests (2 CPU processes under accelerate launch: DDP, FSDP, sharded stages)
#   make test-slow   slow tests too (real small models, full datasets, every fault point)
#   make notebooks   execute analysis/*.py against the store and write analysis/*.ipynb with outputs
# Variables: PYTHON (interpreter that creates .venv), TORCH (torch requirement installed first when no
# NVIDIA GPU is visible; a CUDA machine gets the torch that pip resolves).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install smoke test test-ci test-slow bench notebooks small-models clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q "$(TORCH)"; fi
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,trl]"
	touch $(STAMP)

install: $(STAMP)

smoke: $(STAMP)
	$(BIN)/uld run experiments/smoke.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

test-ci: $(STAMP)
	$(BIN)/python -m pytest -m ci

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

notebooks: $(STAMP)
	$(BIN)/python scripts/build_notebooks.py

small-models: $(STAMP)
	PYTHON=$(BIN)/python ../shared/scripts/get-small-models

bench: $(STAMP)
	$(BIN)/python scripts/bench_losses.py
	$(BIN)/python scripts/bench_training.py
	$(BIN)/python scripts/bench_teacher.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
