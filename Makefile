# make test  — the whole suite (ruff, mypy --strict, pytest); creates .venv on first use.
# make demo  — the demo on the embedded default store.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# make test runs the stateful harness with enough sequences to matter.
export TASKHARBOR_HYPOTHESIS_PROFILE ?= ci

MODULES := $(shell find engine spec drivers conformance model_tests -name '*.py' 2>/dev/null | sort)

.PHONY: test lint typecheck pytest demo bench faults install clean diagrams

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Strict editable mode links each module file, so a new module needs a
# reinstall: the stamp depends on the list of modules and on pyproject.toml.
$(STAMP): pyproject.toml $(BIN)/python $(VENV)/.modules
	flock $(VENV)/.lock $(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

$(VENV)/.modules: FORCE | $(BIN)/python
	@echo "$(MODULES)" | cmp -s - $@ || echo "$(MODULES)" > $@

FORCE:

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict -p taskharbor

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: install
	$(BIN)/python -m taskharbor.demo

diagrams: install
	$(BIN)/python scripts/gen_diagrams.py

# Benchmarks are scripts, not timed tests: each prints its figures as ratios
# against a baseline measured in the same run.
bench: install
	flock $(VENV)/.lock $(BIN)/pip install -q -e '.[dev,bench]' --config-settings editable_mode=strict
	@for script in tests/bench/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

# The fault suite: make test runs its short form; this runs every scenario
# with more seeds and prints the summary table.
faults: install
	TASKHARBOR_FAULTS=long $(BIN)/pytest tests/faults -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
