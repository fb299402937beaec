# The platform's front door: `make run` starts everything locally, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DJANGO_SETTINGS_MODULE ?= settings.local
export FLOWER_BASIC_AUTH ?= admin:admin

.PHONY: run test test-tools lint audit bench chaos services migrate clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

services: $(BIN)/.installed
	$(BIN)/python manage.py check_services

migrate: services
	$(BIN)/python manage.py migrate --no-input -v 0

run: migrate
	$(BIN)/python manage.py collectstatic --no-input -v 0
	$(BIN)/python manage.py setup_demo
	@echo "Web http://127.0.0.1:8000/ (admin at /admin/), sandbox ledger http://127.0.0.1:8025/_sandbox/ledger"
	@echo "Flower http://127.0.0.1:5555/ as $$FLOWER_BASIC_AUTH (set FLOWER_BASIC_AUTH=user:password to change it);" \
	      "/metrics as $${METRICS_BASIC_AUTH:-prometheus:prometheus} (METRICS_BASIC_AUTH). Local only: production refuses both defaults."
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho -d . -f platform/Procfile start

# Bandit fails on any finding of medium severity or above; each one left is explained where it is (# nosec
# with its reason above it). Its low findings are the harness's subprocesses and non-crypto randomness.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/bandit -r jobs notifications harness settings -q --severity-level medium

# Known vulnerabilities in the pinned dependencies; --strict: a package it could not check fails the run. Needs
# PyPI's JSON API or OSV on the network (in its own virtualenv: pip-audit pins its own dependencies).
audit:
	test -x .venv-audit/bin/pip-audit || ($(PYTHON) -m venv .venv-audit && .venv-audit/bin/pip install --quiet pip-audit==2.10.1)
	.venv-audit/bin/pip-audit --strict -r requirements.txt -r requirements-dev.txt

# Chromium, promtool, faketime and the Compose v2 plugin, when missing: nothing in the suite is skipped for a tool.
test-tools:
	bash .ci/install-test-tools

test: $(BIN)/.installed test-tools
	DJANGO_SETTINGS_MODULE=settings.test $(BIN)/python manage.py check_services
	$(MAKE) --no-print-directory lint
	DJANGO_SETTINGS_MODULE=settings.test $(BIN)/python -m pytest $(PYTEST_ARGS)

# Its own database (it keeps the 5 M seeded recipients between runs), Redis database and
# sandbox ports, so a running `make run` is not disturbed; quiet hours off, so the figures
# do not depend on the hour; DEBUG off, as in production.  BENCH_ARGS="--scenarios fanout,blast --duration 30" picks.
BENCH_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:5432/notify_bench REDIS_URL=redis://127.0.0.1:6379/14 \
	SANDBOX_HTTP_URL=http://127.0.0.1:28025 SANDBOX_SMTP_PORT=21025 MARKETING_QUIET_HOURS= DJANGO_DEBUG=false
bench: $(BIN)/.installed
	$(BENCH_ENV) $(BIN)/python manage.py check_services
	$(BENCH_ENV) $(BIN)/python manage.py migrate --no-input -v 0
	$(BENCH_ENV) $(BIN)/python manage.py bench $(BENCH_ARGS)

# Fault drills on an isolated copy of the platform (its own PostgreSQL, Redis, sandbox and processes);
# CHAOS_ARGS="--drill 4 --quick" picks drills. Prints a table and writes bench-results/chaos.json.
chaos: services
	$(BIN)/python manage.py chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) staticfiles
