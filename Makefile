# The two commands of the README: `make demo` and `make test`. Each creates the
# virtual environment it needs from the pinned requirements on first use.
PYTHON ?= python3.11
VENV ?= .venv
WORKDIR ?= runs/synthetic
BIN := $(VENV)/bin

.PHONY: demo test lint clean-venv

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The pinned requirements, then the project itself (editable: the package in this clone is
# what runs, from any directory), without letting pip change a pinned version.
$(VENV)/.runtime-installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(VENV)/.runtime-installed $@

# Train and evaluate on the embedded synthetic DFEW-format dataset.
demo: $(VENV)/.runtime-installed
	$(BIN)/python -m former_dfer_jax.main --config=configs/synthetic.py --workdir=$(WORKDIR)

# The whole test suite (what CI runs).
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -rs -n 2 tests

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check former_dfer_jax configs tests scripts
	$(BIN)/ruff format --check former_dfer_jax configs tests scripts

clean-venv:
	rm -rf $(VENV)
