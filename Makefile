# One-command entry points that set themselves up on a fresh machine (Python 3.10+ with venv).
#   make run [ARGS="objective=grpo kl=fixed"]   the default experiment (objective=ppo kl=adaptive), offline, CPU
#   make test                                   the test suite
# TORCH picks the PyTorch build installed into the venv when it has none, e.g.
#   make test TORCH="torch==2.13.0"  (default)   or   make run TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: install run test test-all rebuild-assets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m rlhf_exp $(ARGS)

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m "slow or not slow"

rebuild-assets: install
	$(BIN)/python -m rlhf_exp.task.build

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
