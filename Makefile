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

# --dist worksteal: a worker that runs out of tests takes queued ones from the other, so the
# few minute-long tests (story, sharding, notebooks) do not pile up at the end of one worker.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --dist worksteal -q --durations=15 tests

experiments: $(BIN)/.installed
	$(BIN)/python -m experiments.run_all $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
