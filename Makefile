# pgwarden: the two commands of the README (make run, make test) and their helpers.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CONFIG ?= config/pgwarden.yaml

.PHONY: run run-local test unit services install install-dev lint clean bench node-deps

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The demo: a throwaway PostgreSQL with two tenants and sample policies, pgwarden in front.
run: install
	$(VENV)/bin/pgwarden demo

# The proxy with config/pgwarden.yaml in front of the local PostgreSQL.
run-local: install services
	$(VENV)/bin/pgwarden run --config $(CONFIG)

# For make run-local and make bench: say what is missing rather than start a system service.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL does not answer on 127.0.0.1:5432: start it (make test starts a throwaway one by itself)"; exit 1; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || echo "Redis does not answer on 127.0.0.1:6379 (only the audit trail's Redis sink needs it)"

node-deps:
	@if command -v npm >/dev/null 2>&1; then \
	  (cd tests/node && (test -d node_modules/pg || npm install --no-audit --no-fund --silent)) || \
	  echo "node-postgres not installed: the node tests will be skipped"; fi

LINTED := proxy policies rewriter tests bench

lint: install-dev
	$(VENV)/bin/ruff check -q $(LINTED)
	$(VENV)/bin/ruff format --check -q $(LINTED)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The machine's PostgreSQL and Redis when they answer (trust auth for postgres), else throwaway ones.
# Coverage of proxy/, policies/ and rewriter/ ([tool.coverage] in pyproject.toml), the pgwarden
# processes the tests start included, must not fall below COVERAGE_FLOOR (percent of lines).
COVERAGE_FLOOR ?= 93
test: install-dev node-deps lint
	COVERAGE_FILE=$(CURDIR)/.coverage $(PY) -m tests.services run -- \
	  $(PY) -m pytest -q --cov --cov-report= --cov-fail-under=$(COVERAGE_FLOOR) tests

# The pure tests (marker `unit`, set by tests/conftest.py) and the docstring examples, in seconds:
# no service is started, PostgreSQL and Redis point at a closed port, pgwarden processes are refused.
unit: install-dev
	PGWARDEN_TEST_SERVICES=none $(PY) -m pytest -q -m "unit and not slow" tests

bench: install-dev services
	$(PY) bench/pgbench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info .coverage .coverage.* htmlcov
