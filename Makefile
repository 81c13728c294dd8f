# Grace: the one entry point for setting up, generating, linting, testing and running.
# `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_DEPS := .build/proto-deps
PROTOS := $(shell find protos -name '*.proto' | sort)
PYTEST_ARGS ?=

.PHONY: help setup generate proto-deps lint breaking test test-fast run bench clean

help: ## Show this help.
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install Grace with its test tools (idempotent).

proto-deps: $(STAMP) ## Copy google/api/*.proto from googleapis-common-protos for buf.
	$(PY) -m services.common.codegen --proto-deps $(PROTO_DEPS)

generate: $(STAMP) ## Regenerate generated/ from protos/ (python, grpc and .pyi stubs).
	$(PY) -m services.common.codegen generated

lint: proto-deps ## buf lint, buf format check, ruff check and format check, mypy.
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

BREAKING_BASE ?= HEAD~1
breaking: proto-deps ## buf breaking (FILE rules) against BREAKING_BASE (default: the previous commit).
	@if git cat-file -e "$(BREAKING_BASE):buf.yaml" 2>/dev/null; then \
		base=$$(mktemp -d) && trap 'rm -rf "$$base"' EXIT && \
		git archive "$(BREAKING_BASE)" protos buf.yaml | tar -x -C "$$base" && \
		mkdir -p "$$base/.build" && cp -r $(PROTO_DEPS) "$$base/.build/" && \
		$(VENV)/bin/buf breaking --against "$$base" && \
		echo "buf breaking: no breaking change against $(BREAKING_BASE)"; \
	else \
		echo "buf breaking: $(BREAKING_BASE) has no protos to compare against; nothing to check"; \
	fi

test: $(STAMP) ## Run the whole test suite (PostgreSQL tests need GRACE_TEST_POSTGRES_URL).
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the test suite without the slow end-to-end tests.
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

run: $(STAMP) ## Run Grace: every service under Guardian, embedded SQLite under ./.grace.
	$(VENV)/bin/grace up

bench: $(STAMP) ## Run every benchmark in benchmarks/ (prints tables and a JSON line each).
	@set -e; for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

clean: ## Remove the virtualenv, build outputs and local data.
	rm -rf $(VENV) .build .grace .pytest_cache .mypy_cache .ruff_cache
