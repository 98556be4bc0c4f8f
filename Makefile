# Every target sets itself up: a fresh machine needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench soak alerts clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/prunelog demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests get a throwaway PostgreSQL server (started and stopped by .ci/with-postgres), so
# the backend contract tests and the multi-node tests run against a real one; never skipped.
test: lint
	PRUNELOG_REQUIRE_POSTGRES=1 .ci/with-postgres $(BIN)/python -m pytest

soak: $(VENV)/.installed-test
	PRUNELOG_REQUIRE_POSTGRES=1 .ci/with-postgres $(BIN)/python -m pytest --soak -m soak

alerts: $(VENV)/.installed
	PYTHON=$(BIN)/python .ci/check-prometheus

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_snapshot.py

clean:
	rm -rf $(VENV) prunelog-data .pytest_cache .mypy_cache .ruff_cache
