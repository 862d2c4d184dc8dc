# MiniGPT Book tasks. `make book` builds the book; `make test` runs the whole test suite.
# Both create (or reuse) .venv, installing the CPU build of torch before anything else, and fetch
# the book's JavaScript (MathJax, ipywidgets) from npm once, so that the built book needs no CDN.
# `make test` executes every notebook once, in fast mode, each copied alone into an empty folder with the
# library installed from a wheel (tests/test_notebooks_alone.py runs nbval on that copy).
# `make test` also installs what the browser check needs: Debian's chromium and Playwright's Python
# package, which drives that system browser (it downloads no browser of its own).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
BROWSER_STAMP := $(VENV)/.browser
CHROMIUM := /usr/bin/chromium
PLAYWRIGHT := playwright>=1.49,<2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Offline data: use ../shared/data when it holds Tiny Shakespeare and nothing else was set.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(MINIGPT_DATA_DIR),)
ifneq ($(wildcard $(SHARED_DATA)/tinyshakespeare.txt),)
export MINIGPT_DATA_DIR := $(SHARED_DATA)
endif
endif

.PHONY: book test lint setup setup-browser vendor clean chatbot web-models

setup: $(STAMP) vendor

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[test]"
	touch $(STAMP)

# MathJax, require.js and the ipywidgets manager, pinned and hash-checked (quick when already there).
vendor: $(STAMP)
	$(BIN)/python book/_ext/vendor.py

setup-browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(STAMP)
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	$(BIN)/python -m pip install --quiet "$(PLAYWRIGHT)"
	touch $(BROWSER_STAMP)

book: $(STAMP) vendor
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is built: open $(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint vendor $(BROWSER_STAMP)
	MINIGPT_FAST=1 $(BIN)/python -m pytest --durations=12 tests

# A mini ChatGPT from nothing: pretrain -> SFT -> reward model -> PPO -> RL, fixed steps, then chat. About 22 minutes on a
# quiet 2-core CPU (7.3 + 3.9 + 1.4 + 2.9 + 6.7); 69 minutes while other training jobs shared the cores, and the same model.
chatbot: $(STAMP)
	$(BIN)/python -m minigpt_lib chatbot --out runs/chatbot
	$(BIN)/python -m minigpt_lib chat --ckpt runs/chatbot/rl

# The models that the book's pages run in the reader's browser: book/web/models/*.safetensors (committed, float16).
# Chapter 6's sampler runs chapter 5's model (the cpu preset, chapter 5's settings); chapter 8's chat box runs the
# model chapter 8 chooses for chatting, its context extended to 256 tokens (WEB_CHAT_CKPT=runs/chatbot/rl, say,
# exports another). A missing run is made first: chapter 5's by `train` (about 10 minutes on 2 CPU cores),
# chapter 8's by running its notebook (about 12 minutes); delete a run to make it again.
WEB_CHAT_CKPT ?= notebooks/runs/chapter8-long
web-models: $(STAMP)
	test -f runs/chapter5/checkpoint.json || $(BIN)/python -m minigpt_lib train --preset cpu --out runs/chapter5
	$(BIN)/python -m minigpt_lib export-web --ckpt runs/chapter5 --out book/web/models/chapter6.safetensors
	test -f $(WEB_CHAT_CKPT)/checkpoint.json || (cd notebooks && ../$(BIN)/jupyter execute --timeout=-1 \
		08_supervised_finetuning.ipynb)
	$(BIN)/python -m minigpt_lib export-web --ckpt $(WEB_CHAT_CKPT) --out book/web/models/chat.safetensors

clean:
	rm -rf _build .pytest_cache
