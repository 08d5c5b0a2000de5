# renas-db: `make demo` runs a real small search; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH := torch==2.14.1 torchvision==0.29.1
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install graphviz browser lint test test-fast demo bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	touch $@

# build/ is removed first: setuptools would otherwise pack files deleted from the tree
install: $(VENV)/.torch
	rm -rf build
	$(PIP) install -q '.[test,dev]'

lint: install
	$(VENV)/bin/ruff check renas_db cli tests bench
	$(VENV)/bin/mypy renas_db cli

$(FASHION):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi

# `show -o` draws cells with Graphviz's `dot` program (the Python package `graphviz` is only
# its binding): Debian's graphviz package, installed with apt if missing.
graphviz:
	@command -v dot >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	apt-get install -y -qq graphviz; else sudo apt-get update -qq && \
	sudo apt-get install -y -qq graphviz; fi; }

# The dashboard's browser tests drive Debian's Chromium through Playwright (launched by its
# path: `playwright install` downloads a browser build and is never run). The headless
# shell is enough; installed with apt if no Chromium is there.
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || { \
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	apt-get install -y -qq chromium-headless-shell; else sudo apt-get update -qq && \
	sudo apt-get install -y -qq chromium-headless-shell; fi; }

# The installed (non-editable) package is what the tests import: run from tests' rootdir
# with importlib mode so the checkout does not shadow site-packages.
test: install lint graphviz browser
	$(VENV)/bin/pytest -n 3 --dist loadfile -p no:cacheprovider -rs --durations=15 tests

# No real processes: unit tests (no database) and integration tests (a real database).
test-fast: install graphviz browser
	$(VENV)/bin/pytest -n 3 --dist loadfile -p no:cacheprovider -rs tests/unit tests/integration

demo: install $(FASHION)
	bash docs/demo.sh

# The quick versions of every benchmark (about 45 minutes on 2 cores); see docs/benchmarks.md.
bench: install $(FASHION)
	$(PIP) install -q '.[bench]'
	$(PY) bench/train_throughput.py
	$(PY) bench/coordination.py --ks 1,2,4,8 --cycles 100
	$(PY) bench/history_scaling.py --sizes 1000,10000,100000 --cycles 200
	$(PY) bench/worker_overhead.py
	$(PY) bench/checkpoint_store.py
	$(PY) bench/search_quality.py --mode quick

clean:
	rm -rf build *.egg-info renas.sqlite* checkpoints demo-run
