# Two commands do all the set-up on a fresh machine:
#   make run    the operator on the embedded local control plane (no cluster needed)
#   make test   lint, type checks and the whole test suite against a real kube-apiserver
# Needs python3 (>= 3.11) and the Go toolchain (>= 1.24); everything else is installed here.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint unit integration tools crds bench clean help

help:
	@echo "make run   - start the local control plane, install CRDs, run the operator, apply examples/"
	@echo "make test  - lint, mypy --strict and the whole test suite (builds the control plane once)"
	@echo "make bench - benchmarks against the local control plane (BENCH_SCALE=quick|full)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

tools:
	hack/build-tools.sh

run: $(STAMP) tools
	$(BIN)/tandem-operator run

lint: $(STAMP)
	$(BIN)/ruff check operator tests hack bench
	$(BIN)/ruff format --check operator tests hack bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) tools
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test: lint tools
	$(BIN)/pytest tests $(PYTEST_ARGS)

crds: $(STAMP)
	$(BIN)/python -m tandem_operator.api.crdgen crds
	cp crds/*.yaml charts/tandem-operator/crds/

bench: $(STAMP) tools
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
