# Every target builds its own virtual environment from nothing (first run ~2 min, then cached).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must come as a matching pair; pinned so CI and laptops agree.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test demo docs docs-check lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Lint, then the test suite and every docstring example (the docs build runs in tests/test_docs.py).
test: venv
	$(BIN)/ruff check micacl_layers tests examples benchmarks scripts
	$(BIN)/python -m pytest -q --doctest-modules micacl_layers tests

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
	$(BIN)/ruff check micacl_layers tests examples benchmarks

bench: venv
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) site screenshots build dist .pytest_cache .hypothesis
