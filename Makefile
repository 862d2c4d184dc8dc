# MiniGPT Book tasks. `make book` builds the book; `make test` runs the whole test suite.
# Both create (or reuse) .venv, installing the CPU build of torch before anything else.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

# Offline data: use ../shared/data when it holds Tiny Shakespeare and nothing else was set.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(MINIGPT_DATA_DIR),)
ifneq ($(wildcard $(SHARED_DATA)/tinyshakespeare.txt),)
export MINIGPT_DATA_DIR := $(SHARED_DATA)
endif
endif

.PHONY: book test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[test]"
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is built: open $(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	MINIGPT_FAST=1 $(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=600 tests notebooks

clean:
	rm -rf _build .pytest_cache
