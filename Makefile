# The README's two commands: `make demo` and `make test`. Both run the same idempotent set-up.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export EMBCAT_DATABASE_URL ?= postgresql://embcat:embcat@127.0.0.1:5432/embcat

.PHONY: setup venv db migrate explorer browser stac-browser typecheck-tree test demo lint clean-venv

setup: venv db migrate explorer typecheck-tree

# Reinstall only when pyproject.toml changes (the stamp records the last install).
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, pinned: it takes the local CPU wheel instead of several GB of CUDA packages.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

db:
	@./scripts/provision-db.sh

migrate: venv
	@$(BIN)/embcat db upgrade

# The explorer's JavaScript (Leaflet from the npm lock file); re-run only when the lock changes.
explorer:
	@./scripts/setup-explorer.sh

# Headless Chromium + chromedriver for the explorer's browser tests (Debian packages).
browser:
	@./scripts/setup-explorer.sh --browser

# STAC Browser 4.0.1 built once into build/stac-browser/dist for its client check (issue 19).
stac-browser:
	@./scripts/setup-stac-browser.sh

# mypy reads the installed layout (embcat.catalog, ...) from links under build/typecheck.
typecheck-tree:
	@./scripts/dev/typecheck-tree.sh

# Two workers (CI has two cores), each test file on one worker (its module fixtures once).
test: setup browser stac-browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: venv typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: setup
	$(BIN)/embcat demo

clean-venv:
	rm -rf $(VENV)
