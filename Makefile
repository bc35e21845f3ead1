# Two commands for a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA := $(CURDIR)/data
SHELL := /bin/bash
export HF_HUB_OFFLINE ?= 1
# Allocator settings for the streaming steps; they must be in the environment before the process
# starts (delta-rs' jemalloc reads its configuration once, when deltalake loads).
export _RJEM_MALLOC_CONF ?= dirty_decay_ms:250,muzzy_decay_ms:0
export MALLOC_MMAP_THRESHOLD_ ?= 1048576
export MALLOC_TRIM_THRESHOLD_ ?= 8388608
export ARROW_DEFAULT_MEMORY_POOL ?= system

.PHONY: install demo test ui clean

install: $(VENV)/.installed

# torch first and pinned: this takes the CPU build where one is offered locally and the CUDA
# build of the same release from PyPI on a GPU machine; the project then pins the same version.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(DATA)/dagster_home/dagster.yaml: dagster.yaml
	mkdir -p $(DATA)/dagster_home
	cp -n dagster.yaml $@ || true

demo: install $(DATA)/dagster_home/dagster.yaml
	export DAGSTER_HOME=$(DATA)/dagster_home EMBEDDING_LANDING=$(DATA)/landing EMBEDDING_LAKE=$(DATA)/lake EMBEDDING_SETTLE_SECONDS=0; \
	set -eo pipefail; \
	$(BIN)/embedding-assets demo-corpus --batch demo; \
	$(BIN)/embedding-assets sync; \
	$(BIN)/dagster asset materialize -m embedding_assets.definitions --select '*document_embeddings,rejected_documents' --partition demo 2>&1 \
	  | grep -E 'STEP_SUCCESS|STEP_FAILURE|RUN_SUCCESS|RUN_FAILURE|ASSET_CHECK_EVALUATION|embeddings demo:|loaded |rejected |Error'; \
	$(BIN)/embedding-assets summary --batch demo; \
	$(BIN)/embedding-assets search "how do I parse a JSON string" --batch demo -k 5

test: install
	$(BIN)/python -m pytest -q

# The UI (http://localhost:3000) with the landing sensor running; `dg dev` reads [tool.dg] in pyproject.toml.
ui: install $(DATA)/dagster_home/dagster.yaml
	source $(BIN)/activate && DAGSTER_HOME=$(DATA)/dagster_home EMBEDDING_LANDING=$(DATA)/landing EMBEDDING_LAKE=$(DATA)/lake dg dev

clean:
	rm -rf $(DATA)
