"""Many processes, one run: what ``torchrun`` / ``accelerate launch`` need beyond ``accelerate.Accelerator``.

* Every rank runs the entry point. Only rank 0 lets Hydra create the run folder; the other ranks point Hydra at a
  throwaway directory and take rank 0's folder by broadcast, so one folder and one metrics file are written.
* Generation needs the full parameters of a sharded model (FSDP, DeepSpeed ZeRO-3): :func:`model_for_generation`.
* Metrics are averaged over ranks once per step (:func:`mean_over_ranks`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import torch


def launcher_rank() -> int:
    """The global rank set by torchrun / accelerate launch (0 when not launched that way)."""
    return int(os.environ.get("RANK", "0"))


def hydra_overrides_for_rank(rank: int) -> list[str]:
    """Command-line overrides that keep Hydra on ranks > 0 from writing a second run folder or log file."""
    if rank == 0:
        return []
    scratch = Path(tempfile.gettempdir()) / f"rlhf_exp_rank{rank}_{os.getpid()}"
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"]


def shared_output_dir(accelerator, output_dir: Path) -> Path:
    """Rank 0's output folder, on every rank."""
    if accelerator.num_processes == 1:
        return output_dir
    from accelerate.utils import broadcast_object_list

    holder = [str(output_dir)]
    broadcast_object_list(holder, from_process=0)
    return Path(holder[0])


def mean_over_ranks(accelerator, metrics: Mapping[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks (every rank must pass the same keys). Identity in one process.

    Values already reduced over the global batch are equal on every rank and stay unchanged.
    """
    if accelerator.num_processes == 1:
        return dict(metrics)
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return {k: float(v) for k, v in zip(keys, t.tolist())}


@contextlib.contextmanager
def model_for_generation(accelerator, model) -> Iterator:
    """The unwrapped model with its full parameters available, for ``generate``.

    DDP and single process: the plain module. FSDP (version 1): parameters gathered with ``summon_full_params``.
    FSDP2 gathers per forward by itself. DeepSpeed ZeRO-3: parameters gathered with ``GatheredParameters``.
    """
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    dtype = accelerator.distributed_type
    if dtype == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if isinstance(model, FSDP):
            with FSDP.summon_full_params(model, writeback=False, recurse=True):
                yield unwrapped
            return
    if dtype == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
                yield unwrapped
            return
    yield unwrapped
