# The two commands a new user needs (see README.md):
#   make run    set up .venv and run the service: API on 127.0.0.1:8000 + one worker
#   make test   set up .venv and run lint, type checks and the whole test suite
# and the first job, offline, on the service `make run` started:
#   make demo   a tiny local model and sample data, one job, followed to the end
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test lint bench bench-evidence setup clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/loracle up

# Needs the service running (`make run` in another terminal) and its key exported.
demo: $(STAMP)
	$(BIN)/loracle demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: $(STAMP) lint
	scripts/services.sh
	scripts/chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

# The evidence benchmark alone; BENCH_ARGS=--quick for the smaller version (its recorded
# times: BENCHMARKS.md)
bench-evidence: $(STAMP)
	$(BIN)/python -m bench evidence $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
