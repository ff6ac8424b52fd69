# Two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch; an unpinned torch pulls gigabytes of CUDA packages.
TORCH := torch==2.13.0
# Extra pip arguments for torch only (the Dockerfile points them at the CPU wheel index).
TORCH_PIP_ARGS ?=

.PHONY: install install-test migrate run worker test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet $(TORCH) $(TORCH_PIP_ARGS)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

## install: create or update .venv with the service's dependencies
install: | $(PY)
	$(PIP) install --quiet $(TORCH) $(TORCH_PIP_ARGS)
	$(PIP) install --quiet -e .
	touch $(VENV)/.installed

## install-test: also the test and benchmark tools
install-test: $(VENV)/.installed-test

## migrate: bring the database (DATABASE_URL, default SQLite under ./var/) to the latest schema
migrate: $(VENV)/.installed
	$(PY) -m app.migrate upgrade head

## run: install, migrate and serve on http://$(HOST):$(PORT) with the in-process worker
run: migrate
	$(PY) -m app

## worker: an extra worker process against the same database (PostgreSQL for more than one)
worker: migrate
	$(PY) -m app.worker

## test: the whole suite on SQLite, and on PostgreSQL too when TEST_DATABASE_URL is set
test: $(VENV)/.installed-test
	$(PY) -m pytest

## lint: ruff and mypy
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app pipelines bench

## bench: service latency and throughput next to the raw encoder (bench/triage.py)
bench: $(VENV)/.installed-test
	$(PY) bench/triage.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
