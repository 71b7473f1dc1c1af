# `make test` and `make demo` set everything up on a fresh machine: a .venv with the pinned torch build and bot installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: install test demo bench clean
install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/bot demo --out runs/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/pretrain_throughput.py

clean:
	rm -rf runs .pytest_cache
