# One-command entry points that set themselves up on a fresh machine (Python 3.10+ with venv).
#   make run [ARGS="objective=grpo kl=fixed"]   the default experiment (objective=ppo kl=adaptive), offline, CPU
#   make test                                   the test suite
# TORCH is what pip installs for PyTorch when the venv has none. The default, torch==2.13.0, comes from your pip
# index: from PyPI the CUDA build on Linux x86-64, a CPU build on macOS and Windows. To choose the build:
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"     the CPU build
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cuXXX"   a CUDA build
# CI (.ci/run) pins the CPU build: make test TORCH="torch==2.13.0+cpu".
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
