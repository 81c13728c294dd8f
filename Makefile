# Grace: the one entry point for setting up, generating, linting, testing and running.
# `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PROTO_DEPS := .build/proto-deps
PROTOS := $(shell find protos -name '*.proto' | sort)
PYTEST_ARGS ?=

.PHONY: help setup bytecode lock generate proto-deps lint breaking release-contracts test test-fast run bench clean explorer-assets

help: ## Show this help.
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# Every Python package comes from the lock, by version and hash; Grace itself is installed
# on top without resolving anything, with the locked build backend (no build isolation).
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP) bytecode ## Create .venv and install Grace with its test tools from requirements.lock.

# An editable install leaves Grace's own modules (and generated/) without bytecode, and a
# Python that may not write it (PYTHONDONTWRITEBYTECODE, a read-only or root-owned checkout)
# then compiles them from source at every start: about a third of the fork server's import
# time at boot. compileall only rewrites what is stale, so running it again is cheap.
BYTECODE_DIRS := services gateway generated examples
bytecode: $(STAMP) ## Compile Grace's modules to bytecode (setup, run and bench do it).
	@$(PY) -m compileall -q -j 0 $(BYTECODE_DIRS) > /dev/null

# The build backend is not a dependency of the project, so it is named here to be locked too
# (keep it in step with [build-system] in pyproject.toml). uv comes from the lock once there
# is one; the very first lock bootstraps it.
lock: ## Re-resolve requirements.lock from pyproject.toml (moves versions on purpose).
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet --disable-pip-version-check uv
	echo 'hatchling>=1.27' | $(VENV)/bin/uv pip compile pyproject.toml - --extra test \
		--universal --python-version 3.11 --generate-hashes --quiet \
		--custom-compile-command 'make lock' -o $(LOCK)
	@rm -f $(STAMP)
	$(MAKE) setup

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

# The contracts as last released, as a buf image (descriptors without comments). Comparing
# with a committed baseline, not with the previous commit, means a breaking change cannot
# slip through by being followed by another commit.
RELEASED_CONTRACTS := protos/released.binpb
breaking: proto-deps ## buf breaking (FILE rules) against the released contracts in protos/released.binpb.
	@current=$$(mktemp --suffix=.binpb) && trap 'rm -f "$$current"' EXIT && \
		$(VENV)/bin/buf build --exclude-source-info -o "$$current" && \
		$(VENV)/bin/buf breaking "$$current" --against $(RELEASED_CONTRACTS) && \
		echo "buf breaking: no breaking change against $(RELEASED_CONTRACTS)"

release-contracts: proto-deps ## Record the current contracts as released: the baseline of make breaking.
	$(VENV)/bin/buf build --exclude-source-info -o $(RELEASED_CONTRACTS)

# Swagger UI's files for the gateway's /docs, from the swagger-ui-dist version that
# gateway/explorer/package-lock.json pins (committed, so setup needs no Node; a test checks
# they match the lock).
EXPLORER := gateway/explorer
EXPLORER_FILES := swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE \
	swagger-ui-bundle.js.LICENSE.txt
explorer-assets: ## Refresh gateway/explorer/assets from the locked swagger-ui-dist (needs npm).
	@work=$$(mktemp -d) && trap 'rm -rf "$$work"' EXIT && \
		cp $(EXPLORER)/package.json $(EXPLORER)/package-lock.json "$$work" && \
		(cd "$$work" && npm ci --ignore-scripts --no-audit --no-fund --silent) && \
		for f in $(EXPLORER_FILES); do cp "$$work/node_modules/swagger-ui-dist/$$f" $(EXPLORER)/assets/; done

# Tests run in parallel worker processes, one per core up to four: most of a test's time is
# spent waiting on the servers and processes it starts, so two workers on two cores take
# about half the time of one. Every test owns its ports, data dirs, databases and streams,
# so workers never meet. `PYTEST_ARGS=-n0` runs everything in one process (for a debugger).
# The whole run ends with its slowest tests, so a suite that creeps towards its time budget
# shows where.
PYTEST_WORKERS = -n auto --maxprocesses 4

test: $(STAMP) ## Run the whole test suite (PostgreSQL tests need GRACE_TEST_POSTGRES_URL).
	$(PY) -m pytest $(PYTEST_WORKERS) --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the test suite without the slow end-to-end tests.
	$(PY) -m pytest $(PYTEST_WORKERS) -m 'not slow' $(PYTEST_ARGS)

run: $(STAMP) bytecode ## Run Grace: every service under Guardian, embedded SQLite under ./.grace.
	$(VENV)/bin/grace up

# Each benchmark ends with one JSON line; they are collected in one file per run, so runs
# can be compared (`BENCH_OUT=... make bench` to choose it). The machine's own figures (load,
# interpreter speed, fdatasync, raw JetStream) come first and last: a slower machine, not
# slower code, is the first thing to rule out when two files differ.
BENCH_OUT ?= .build/bench/$(shell date -u +%Y%m%dT%H%M%SZ).jsonl
BENCHMARKS = $(filter-out benchmarks/machine.py,$(wildcard benchmarks/[!_]*.py))
bench: $(STAMP) bytecode ## Run every benchmark in benchmarks/; their JSON lines go to .build/bench/<time>.jsonl.
	@set -o pipefail; mkdir -p $(dir $(BENCH_OUT)); out=$$(mktemp) && trap 'rm -f "$$out"' EXIT && \
	for b in benchmarks/machine.py $(BENCHMARKS) benchmarks/machine.py; do \
		echo "== $$b"; $(PY) $$b | tee "$$out" || exit 1; tail -n 1 "$$out" >> $(BENCH_OUT); \
	done; echo "JSON lines: $(BENCH_OUT)"

clean: ## Remove the virtualenv, build outputs and local data.
	rm -rf $(VENV) .build .grace .pytest_cache .mypy_cache .ruff_cache
