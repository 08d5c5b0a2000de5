# renas-db: `make demo` runs a real small search; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH := torch==2.14.1 torchvision==0.29.1
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install test demo bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	touch $@

install: $(VENV)/.torch
	$(PIP) install -q '.[test]'

$(FASHION):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi

# The installed (non-editable) package is what the tests import: run from tests' rootdir
# with importlib mode so the checkout does not shadow site-packages.
test: install
	$(VENV)/bin/pytest -n 3 --dist loadfile -q -p no:cacheprovider -rs tests

demo: install $(FASHION)
	bash docs/demo.sh

bench: install $(FASHION)
	$(PY) bench/train_throughput.py --rounds 2 --images 640

clean:
	rm -rf build *.egg-info renas.sqlite* checkpoints demo-run
