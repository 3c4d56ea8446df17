# PACS Enhancement Node: `make run` starts the node, `make test` runs every check.
# Both set up everything they need on a fresh machine (Debian, run as root or with sudo).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch 2.13.0: the CPU build where no GPU is present, the CUDA build from the package index otherwise.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: run demo setup test test-deps services lint pytest clean

run: setup
	$(VENV)/bin/pacs-node db upgrade
	$(VENV)/bin/pacs-node serve

# Orthanc as the PACS, the node and its worker on this machine; the bundled real CT study
# goes PACS -> node -> PACS (docker/demo.py; Ctrl-C stops it).
demo: setup test-deps
	$(PY) docker/demo.py $(DEMO_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test-deps:
	bash .ci/ensure-test-deps.sh

services:
	bash .ci/ensure-services.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy pacs_node workers models lab docker/demo.py

pytest: setup test-deps services
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
