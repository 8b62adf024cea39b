# Two entry points: `make demo` (the main job) and `make test` (the whole test suite).
# Each creates the virtual environment on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test experiments clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/compressjax demo

# --dist loadfile: each test file runs on one worker, so a module fixture (the demo story, the
# LM quick runs, the sharding subprocesses) runs once, not once per worker that takes its tests.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=15 tests

experiments: $(BIN)/.installed
	$(BIN)/python -m experiments.run_all $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
