# Every target builds its own virtual environment from nothing (first run ~2 min, then cached).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must come as a matching pair; pinned so CI and laptops agree.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# The oldest torch we support (pyproject's floor): the suite runs there too, without
# torchvision (no wheel of it imports beside this torch here; its tests skip).
OLDEST_VENV ?= .venv-oldest
OLDEST_TORCH ?= torch==2.13.0
OLDEST_BIN := $(OLDEST_VENV)/bin
PYTEST := python -m pytest -q --doctest-modules micacl_layers tests

.PHONY: venv venv-oldest test test-fast test-oldest demo docs docs-check lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(OLDEST_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/python -m pip install -q --upgrade pip
	$(OLDEST_BIN)/python -m pip install -q $(OLDEST_TORCH)
	$(OLDEST_BIN)/python -m pip install -q -e '.[data,test,docs,lint]' tqdm matplotlib scikit-learn
	touch $@

venv-oldest: $(OLDEST_VENV)/.installed

# Lint and type check, then the test suite and every docstring example (the docs build runs in
# tests/test_docs.py), then the whole suite again on the oldest supported torch with the fast
# paths off (tests of the fast kernels switch them on themselves).
test: lint venv-oldest
	$(BIN)/$(PYTEST)
	MICACL_FAST_PATHS=off $(OLDEST_BIN)/$(PYTEST)

# The suite on the newest torch only, without the slow end-to-end runs (about a minute).
test-fast: venv
	$(BIN)/$(PYTEST) -m "not slow"

test-oldest: venv-oldest
	MICACL_FAST_PATHS=off $(OLDEST_BIN)/$(PYTEST)

demo: venv
	$(BIN)/python examples/train_dfew.py --dataset synthetic --demo

# The site goes to site/; any warning (broken link or anchor, bad docstring) fails the build.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Builds the site, serves it on 127.0.0.1 and checks it in headless Chromium (math typeset, API
# entries present); screenshots go to screenshots/. Needs Chromium: apt-get install -y chromium
docs-check: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/python scripts/docs_screenshots.py

lint: venv
	$(BIN)/ruff check micacl_layers tests examples benchmarks scripts
	$(BIN)/ruff format --check micacl_layers tests examples benchmarks scripts
	$(BIN)/mypy micacl_layers

bench: venv
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) site screenshots build dist .pytest_cache .hypothesis
