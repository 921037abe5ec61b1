# make test  — the whole suite (ruff, mypy --strict, pytest); creates .venv on first use.
# make demo  — the demo on the embedded default store.
# make test-stress — the timing-sensitive tests, repeatedly, beside a CPU hog on every core.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The demo needs the package and its runtime dependencies only, not the dev tools.
DEMO_STAMP := $(VENV)/.installed-demo
# make test runs the stateful harness with enough sequences to matter.
export TASKHARBOR_HYPOTHESIS_PROFILE ?= ci

MODULES := $(shell find engine spec drivers conformance model_tests -name '*.py' 2>/dev/null | sort)

.PHONY: test lint typecheck pytest demo bench faults install clean diagrams test-stress

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Strict editable mode links each module file, so a new module needs a
# reinstall: the stamp depends on the list of modules and on pyproject.toml.
# Setuptools warns on each strict editable install not to delete build/ (13
# lines); make clean removes build/ and .venv together, so the note is muted.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
$(STAMP): pyproject.toml $(BIN)/python $(VENV)/.modules
	$(QUIET_EDITABLE) flock $(VENV)/.lock $(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP) $(DEMO_STAMP)

# The dev install above includes this one (and touches its stamp too).
$(DEMO_STAMP): pyproject.toml $(BIN)/python $(VENV)/.modules
	$(QUIET_EDITABLE) flock $(VENV)/.lock $(BIN)/pip install -q -e . --config-settings editable_mode=strict
	touch $(DEMO_STAMP)

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

demo: $(DEMO_STAMP)
	$(BIN)/python -m taskharbor.demo

diagrams: install
	$(BIN)/python scripts/gen_diagrams.py

# Benchmarks are scripts, not timed tests: each prints its figures as ratios
# against a baseline measured in the same run.
bench: install
	$(QUIET_EDITABLE) flock $(VENV)/.lock $(BIN)/pip install -q -e '.[dev,bench]' --config-settings editable_mode=strict
	@for script in tests/bench/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

# The fault suite: make test runs its short form; this runs every scenario
# with more seeds and prints the summary table.
faults: install
	TASKHARBOR_FAULTS=long $(BIN)/pytest tests/faults -p no:cacheprovider

# The tests that run on wall time (marker "timing": worker threads and processes,
# waits) STRESS_RUNS times in a row beside one busy loop per core, so a test that
# leans on an idle machine fails here rather than on a loaded one.  The busy loops
# are stopped however the runs end.
STRESS_RUNS ?= 3
test-stress: install
	@cores=$$(nproc); hogs=""; \
	trap 'kill $$hogs 2>/dev/null' EXIT INT TERM; \
	for _ in $$(seq $$cores); do $(BIN)/python -c 'while True: pass' & hogs="$$hogs $$!"; done; \
	start=$$(date +%s); \
	for run in $$(seq $(STRESS_RUNS)); do \
		echo "== stress run $$run of $(STRESS_RUNS), beside $$cores busy loops"; \
		$(BIN)/pytest -m timing -q -p no:cacheprovider $(PYTEST_ARGS) || exit 1; \
	done; \
	echo "== $(STRESS_RUNS) stress runs passed in $$(( $$(date +%s) - start )) s"

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
