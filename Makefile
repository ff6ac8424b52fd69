# Two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The CPU build of torch; an unpinned torch pulls gigabytes of CUDA packages.
TORCH := torch==2.13.0
# Extra pip arguments for torch only (the Dockerfile points them at the CPU wheel index).
TORCH_PIP_ARGS ?=

.PHONY: install install-test migrate run worker test lint bench demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet $(TORCH) $(TORCH_PIP_ARGS)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
	command -v chromium >/dev/null || apt-get install -y -qq chromium \
		|| (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "install Debian's chromium for tests/web/test_browser.py"
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

## demo: a fresh var/demo/demo.db with 8 weeks of generated tickets and posts (fixtures/demo), imported, analysed and clustered, and the last complete week's digest as var/demo/digest.{json,md,html}
demo: export DATABASE_URL := sqlite:///var/demo/demo.db
demo: export DATA_DIR := var/demo
demo: export WORKER_PRIORITY := normal
demo: $(VENV)/.installed
	rm -rf var/demo
	mkdir -p var/demo
	$(PY) -m app.migrate upgrade head
	$(PY) fixtures/demo/generate.py --end-week last --seed 7 --out var/demo > var/demo/week
	$(PY) -m pipelines import var/demo/tickets.jsonl --kind tickets --quiet
	$(PY) -m pipelines import var/demo/posts.jsonl --kind posts --quiet
	$(PY) -m app.worker --once
	$(PY) -m pipelines cluster --window-days 63
	for format in json md html; do \
		$(PY) -m pipelines digest --week $$(cat var/demo/week) --format $$format \
			--out var/demo/digest.$$format || exit 1; \
	done
	@echo "demo: database $$DATABASE_URL; data and plan of the planted issues in var/demo/"
	@echo "demo: digest of $$(cat var/demo/week): var/demo/digest.json var/demo/digest.md var/demo/digest.html"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
