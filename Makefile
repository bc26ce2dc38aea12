# Clarion developer commands. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

# Django refuses to start without SECRET_KEY and CLARION_ENCRYPTION_KEYS. migrate, seed and run use
# the exported ones, or else random keys generated once into $(SECRET_KEY_FILE) and
# $(ENCRYPTION_KEY_FILE) (0600) and kept.
SECRET_KEY_FILE := $(or $(CLARION_VAR_DIR),var)/secret_key
ENCRYPTION_KEY_FILE := $(or $(CLARION_VAR_DIR),var)/encryption_key
WITH_KEY = SECRET_KEY="$${SECRET_KEY:-$$(cat $(SECRET_KEY_FILE))}" \
	CLARION_ENCRYPTION_KEYS="$${CLARION_ENCRYPTION_KEYS:-$$(cat $(ENCRYPTION_KEY_FILE))}"

# mypy's Django plugin loads the settings, which refuse to start without keys: throwaway ones (pytest's).
MYPY_KEYS := SECRET_KEY=mypy-only-not-secret CLARION_ENCRYPTION_KEYS=dGVzdHMtb25seS1ub3Qtc2VjcmV0LWVuY3J5cHRpb24=

# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="tests/inbox -x"`.
PYTEST_ARGS ?=
# The services run (make test-services): PostgreSQL + Redis on this machine.
SERVICES_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/clarion
SERVICES_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: help venv run migrate seed test test-services test-e2e lint fmt bench clean

help: ## List the targets
	@echo "Clarion — make targets:"
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: HOST=$(HOST) PORT=$(PORT) CLARION_VAR_DIR, CLARION_PUBLIC_URL (run: http://HOST:PORT unless set),"
	@echo "           DATABASE_URL, REDIS_URL, PYTEST_ARGS"

venv: $(STAMP) ## Create .venv and install Clarion with the dev extra (again only when pyproject.toml changes)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

$(SECRET_KEY_FILE):
	@mkdir -p $(@D)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))' > $@.tmp && mv $@.tmp $@
	@echo "Generated a SECRET_KEY for this installation in $@"

# A Fernet key: 32 random bytes, url-safe base64. Losing it loses the secrets it encrypted.
$(ENCRYPTION_KEY_FILE):
	@mkdir -p $(@D)
	@umask 077 && $(PYTHON) -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' > $@.tmp && mv $@.tmp $@
	@echo "Generated CLARION_ENCRYPTION_KEYS for this installation in $@"

migrate: venv $(SECRET_KEY_FILE) $(ENCRYPTION_KEY_FILE) ## Apply migrations (and the channels-lite database on the embedded default)
	$(WITH_KEY) $(PY) manage.py migrate --noinput
	@if [ -z "$$REDIS_URL" ]; then $(WITH_KEY) $(PY) manage.py migrate --database channels --noinput -v0; fi

seed: migrate ## Create what is missing of the demo (environment, templates, workflow, admin user; var/demo.json)
	$(WITH_KEY) $(PY) manage.py seed_demo

run: venv migrate ## Migrate, seed what is missing of the demo, run web (uvicorn) + worker on HOST:PORT; Ctrl-C stops both
	$(WITH_KEY) $(PY) manage.py collectstatic --noinput -v0
	$(WITH_KEY) $(PY) manage.py seed_demo
	@$(WITH_KEY) PY=$(PY) scripts/run.sh  # prints the banner (scripts/banner.py) once the web process is up

test: venv ## Run the test suite on the embedded default (SQLite), system tests included, e2e excluded
	env -u DATABASE_URL -u REDIS_URL $(VENV)/bin/pytest -q -m "not e2e and not services" $(PYTEST_ARGS)

test-services: venv ## Run the test suite on PostgreSQL + Redis (started if down), services tests included
	scripts/ensure-services.sh
	DATABASE_URL=$(SERVICES_DATABASE_URL) REDIS_URL=$(SERVICES_REDIS_URL) \
		$(VENV)/bin/pytest -q -m "not e2e" $(PYTEST_ARGS)

test-e2e: venv ## Run the browser tests (system Chromium at /usr/bin/chromium)
	@if [ ! -d tests/e2e ]; then echo "test-e2e: no tests/e2e folder yet; nothing to run"; exit 0; fi; \
	status=0; env -u DATABASE_URL -u REDIS_URL $(VENV)/bin/pytest -q -m e2e tests/e2e $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-e2e: no e2e tests collected"; status=0; fi; \
	exit $$status

lint: venv ## ruff check + ruff format --check + lint-imports (the dependency map in pyproject.toml) + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(MYPY_KEYS) $(VENV)/bin/mypy

fmt: venv ## Fix what ruff can fix and format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv ## Run the benchmark suite (python -m bench)
	$(PY) -m bench

.PHONY: chaos chaos-short
chaos: venv ## Fault suite (≤ 15 min; CHAOS_PROFILE=short for the CI variant): see docs/reliability.md
	$(PY) -m bench.chaos --profile $${CHAOS_PROFILE:-full}

chaos-short: venv ## Fault suite, short variant for CI (≤ 4 min)
	$(PY) -m bench.chaos --profile short

clean: ## Remove var/ (local databases, mail, static files, demo keys)
	rm -rf var/
