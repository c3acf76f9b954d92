# The two commands a newcomer needs: `make demo` and `make test`. Everything else is below them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo serve test unit lint typecheck fmt lock bench loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Every dependency comes from a lock file, pinned with its hashes (`make lock` writes them from
# pyproject.toml); the project itself is installed on top, editable, without resolving anything again.
$(VENV)/.installed: requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/runtime.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/jamu demo

serve: $(VENV)/.installed
	$(BIN)/jamu serve

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The pure and in-process tests, in seconds: no Redis, PostgreSQL, browser or process, no whole app and
# no waiting on real time (those are marked slow and run in make test).
unit: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/unit -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy --strict on gateway/ (settings in pyproject.toml).
typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

fmt: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolves the dependencies from pyproject.toml into the lock files (the dev lock is constrained by the
# runtime one, so the two never disagree on a version).
LOCK_FLAGS := --quiet --allow-unsafe --strip-extras --generate-hashes --no-emit-find-links --no-emit-index-url
lock: $(VENV)/.dev-installed
	$(BIN)/pip-compile $(LOCK_FLAGS) --upgrade -o requirements/runtime.txt pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --upgrade --extra dev -c requirements/runtime.txt -o requirements/dev.txt pyproject.toml

# wrk drives the gateway in the hardening benchmark; installed from Debian's packages where we are root.
bench: $(VENV)/.dev-installed
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } || \
		echo "wrk is missing (Debian package wrk): the hardening benchmark will say so"
	$(BIN)/python -m loadtests.bench

# Locust scenarios against a local gateway for LOADTEST_DURATION (60s); CSV and HTML in loadtests/reports;
# non-zero exit when an SLO is missed.
loadtest: $(VENV)/.dev-installed
	$(BIN)/python -m loadtests.run_loadtest

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
