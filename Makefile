# The README's two set-up commands: `make demo` and `make test`. Everything else is a convenience.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install imtext with the test extras

demo: install  ## the whole chain on the synthetic world, ending at the search page
	$(BIN)/imtext demo

test: install  ## the test suite (ruff included)
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install  ## every benchmark at its default size (slow; see docs/BENCHMARKS.md)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/index_bench.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf runs test-artifacts .pytest_cache
