# The two commands a newcomer needs are `make demo` and `make test`; each sets up what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench ui prod-up prod-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,deploy]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/impactin demo

test: $(STAMP)
	$(BIN)/ruff check impactin_pipelines tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check impactin_pipelines tests benchmarks
	$(BIN)/ruff format --check impactin_pipelines tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The Dagster UI and the sandbox providers on .impactin (what `make demo` left there); Ctrl-C stops both.
ui: $(STAMP)
	$(BIN)/impactin ui

# The production deployment on this machine: PostgreSQL storage (deploy/dagster.yaml), a gRPC code server, the
# webserver and the daemon as separate processes on 127.0.0.1 (see deploy/loopback.py for ports and variables).
prod-up: $(STAMP)
	$(BIN)/python deploy/loopback.py up

prod-down:
	$(BIN)/python deploy/loopback.py down

clean:
	rm -rf $(VENV) .impactin .pytest_cache .ruff_cache .mypy_cache
