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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

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


# ---------------------------------------------------------------------------------------------------------------
# Batch geometry: every size in the config is global (all processes together); per-process sizes are derived.
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchGeometry:
    """The sizes of one step, global and per process.

    ``batch`` sequences (examples) per step over all processes, split into optimizer steps of ``mini`` sequences,
    each accumulated from ``accumulation_steps`` forward/backward passes of ``micro`` sequences (all global).
    Each process holds ``1/world`` of each: ``local_batch``, ``local_mini``, ``local_micro``.
    """

    world: int
    batch: int
    mini: int
    micro: int

    @property
    def local_batch(self) -> int:
        return self.batch // self.world

    @property
    def local_mini(self) -> int:
        return self.mini // self.world

    @property
    def local_micro(self) -> int:
        return self.micro // self.world

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step (the same on every process)."""
        return self.mini // self.micro

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps per pass over a step's batch."""
        return self.batch // self.mini


def batch_geometry(batch_size: int, mini_batch_size: int, micro_batch_size, world: int, group_size: int = 1,
                   min_local_micro: int = 1) -> BatchGeometry:
    """Check ``train.batch_size`` / ``mini_batch_size`` / ``micro_batch_size`` (all global) against ``world``
    processes and ``group_size`` completions per prompt; raise a ``ValueError`` naming the numbers to change.

    ``mini_batch_size=None`` means ``batch_size`` (one optimizer step per pass); ``micro_batch_size=None`` means
    ``mini_batch_size`` (no accumulation). ``min_local_micro``: the smallest
    per-process micro-batch the objective accepts (KTO: 2).
    """
    B = int(batch_size)
    M = B if mini_batch_size in (None, "null") else int(mini_batch_size)
    m = M if micro_batch_size in (None, "null") else int(micro_batch_size)
    G, W = int(group_size), int(world)
    for name, v in (("batch_size", B), ("mini_batch_size", M), ("micro_batch_size", m)):
        if v < 1:
            raise ValueError(f"train.{name} must be >= 1, got {v}.")
    problems = []
    if B % (G * W):
        what = f"objective.group_size={G} x {W} processes" if G > 1 else f"the {W} processes"
        problems.append(f"train.batch_size={B} must be a multiple of {what} = {G * W} (each process samples whole "
                        f"prompt groups)")
    if B % M:
        problems.append(f"train.mini_batch_size={M} must divide train.batch_size={B}")
    if M % W:
        problems.append(f"train.mini_batch_size={M} must be a multiple of the {W} processes (each process holds "
                        f"mini_batch_size / processes of each optimizer step)")
    if M % m:
        problems.append(f"train.micro_batch_size={m} must divide train.mini_batch_size={M}")
    if m % W:
        problems.append(f"train.micro_batch_size={m} must be a multiple of the {W} processes")
    elif m // W < min_local_micro:
        problems.append(f"train.micro_batch_size={m} gives {m // W} per process; this objective needs at least "
                        f"{min_local_micro} (raise train.micro_batch_size to {min_local_micro * W})")
    if problems:
        raise ValueError("Batch sizes are global (all processes together) and per-process sizes are derived: "
                         + "; ".join(problems) + ".")
    return BatchGeometry(world=W, batch=B, mini=M, micro=m)


def rank_slice(items: Sequence, world: int, rank: int, chunk: int) -> list:
    """This process's share of a global list: of each consecutive ``chunk`` of ``items`` (a global micro-batch),
    the ``rank``-th of ``world`` equal parts. With ``chunk = len(items)``: one contiguous slice per rank.

    Every process draws the same global list (one shuffle, one shared seed) and keeps its slice, so the ranks'
    examples are disjoint and global micro-batch ``j`` holds the same examples for any process count.
    """
    if chunk % world or len(items) % chunk:
        raise ValueError(f"rank_slice: chunk={chunk} must divide len(items)={len(items)} and be a multiple of "
                         f"world={world}.")
    part = chunk // world
    out = []
    for s in range(0, len(items), chunk):
        out.extend(items[s + rank * part:s + (rank + 1) * part])
    return out


def micro_batch_loss_scale(local_count: float, global_count: float, world: int, accumulation_steps: int) -> float:
    """Factor for a micro-batch's mean loss so that the optimizer step sees the gradient of the mean over the
    whole global mini-batch, however it is split into processes and micro-batches.

    The micro-batch's loss is a mean over its ``local_count`` units (tokens or sequences); the global mini-batch
    has ``global_count``. ``accelerate`` divides every ``backward`` by ``accumulation_steps`` (DeepSpeed's engine
    does the same) and DDP/FSDP/DeepSpeed average gradients over ``world`` processes, so the factor is
    ``world * accumulation_steps * local_count / global_count``; summed over all micro-batches of all processes
    the weights ``local_count / global_count`` add up to 1.
    """
    if global_count <= 0:
        return 0.0
    return float(world) * float(accumulation_steps) * float(local_count) / float(global_count)


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously), so a timer reads the real time."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(dev)


def in_mixed_precision(accelerator, module: torch.nn.Module) -> torch.nn.Module:
    """Run ``module``'s forward under the accelerator's autocast (in place), as ``accelerator.prepare`` does for
    the trained model: the reference then computes in the same precision as the policy. Identity without mixed
    precision."""
    if str(accelerator.mixed_precision) == "no" or getattr(module, "_rlhf_exp_autocast", False):
        return module
    forward = module.forward

    def autocast_forward(*args, **kwargs):
        with accelerator.autocast():
            return forward(*args, **kwargs)

    module.forward = autocast_forward
    module._rlhf_exp_autocast = True
    return module


def even_chunks(n_items: int, n_global: int, world: int, max_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` bounds splitting this process's ``n_items`` into as many chunks as *every* process makes.

    ``n_global`` items dealt round-robin over ``world`` processes give each ``n_global // world`` or one more; all
    processes cut theirs into ``ceil((n_global // world) / max_size)`` chunks (at least 1) of sizes that differ by at
    most 1, so collective calls inside a forward (FSDP, ZeRO-3, KTO's reference point) line up on every rank.
    A chunk may then hold ``max_size + 1`` items. Needs ``n_global >= world``.
    """
    if n_global < world:
        raise ValueError(f"{n_global} held-out items cannot be shared by {world} processes (each needs at least "
                         f"one): raise dataset.eval_size or run fewer processes.")
    n_chunks = max(1, -(-(n_global // world) // max(1, int(max_size))))
    base, extra = divmod(n_items, n_chunks)
    bounds, s = [], 0
    for i in range(n_chunks):
        e = s + base + (1 if i < extra else 0)
        bounds.append((s, e))
        s = e
    return bounds
