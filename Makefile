# The two commands a newcomer needs: `make demo` and `make test`. Everything else is below them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo serve test unit lint fmt bench loadtest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/jamu demo

serve: $(VENV)/.installed
	$(BIN)/jamu serve

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The pure and in-process tests only: no Redis, no PostgreSQL, no browser, no server processes.
unit: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

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
