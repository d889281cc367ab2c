# Every target builds its own virtual environment from nothing (first run ~2 min, then cached).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision must come as a matching pair; pinned so CI and laptops agree.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test demo docs lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/python examples/train_dfew.py --dataset synthetic --demo

docs: venv
	$(BIN)/mkdocs build --strict

lint: venv
	$(BIN)/ruff check micacl_layers tests examples benchmarks

bench: venv
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) site build dist .pytest_cache .hypothesis
