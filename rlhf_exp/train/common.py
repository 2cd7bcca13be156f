"""Pieces every loop shares: the accelerator, seeding, running reward statistics, saving the policy."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from rlhf_exp.core.state import check_keys


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN/inf; the update was not applied and the run stops."""


def quiet_libraries() -> None:
    """Silence the per-file progress bars and advisories of transformers/datasets; the run shows its own bar."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        import datasets

        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def launch_world_size() -> int:
    """The number of processes the launcher (torchrun / accelerate launch / deepspeed) started; 1 otherwise."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_geometry_of(cfg, world: int):
    """The run's :class:`~rlhf_exp.distributed.BatchGeometry` for ``world`` processes from ``cfg.train``
    (``batch_size``, ``mini_batch_size``, ``micro_batch_size``, all global) and the objective's group size; raises
    a ``ValueError`` with the numbers to change; the objective declares the smallest micro-batch per process it
    accepts. Cheap: called before anything loads."""
    from rlhf_exp.distributed import batch_geometry

    from rlhf_exp.objectives import min_local_micro_batch

    t, obj = cfg.train, cfg.objective
    group = int(obj.group_size) if obj.kind == "online" else 1
    return batch_geometry(t.batch_size, t.mini_batch_size, t.micro_batch_size, world, group,
                          min_local_micro_batch(obj))


def make_accelerator(cfg):
    """An ``accelerate.Accelerator`` for ``cfg.device`` (auto | cpu | cuda) and ``cfg.train.mixed_precision``, with
    gradient accumulation set from the batch geometry (:func:`batch_geometry_of`, checked first).

    Under a launcher on a machine without CUDA, ``device=auto`` means CPU processes joined by gloo. The number of
    processes the accelerator sees must be the launcher's world size; a mismatch (a run that would silently train
    N separate copies) raises.
    """
    from accelerate import Accelerator

    device = str(cfg.device)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}: valid values are auto, cpu, cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is visible; use device=auto or device=cpu.")
    world = launch_world_size()
    geometry = batch_geometry_of(cfg, world)
    cpu = device == "cpu" or (device == "auto" and world > 1 and not torch.cuda.is_available())
    mp = str(cfg.train.mixed_precision)
    if world == 1:  # one process (a notebook, a test, a Hydra multirun): a new run may change the precision
        from accelerate.state import AcceleratorState

        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision") not in (None, mp):
            AcceleratorState._reset_state()
    acc = Accelerator(cpu=cpu, mixed_precision=mp, gradient_accumulation_steps=geometry.accumulation_steps)
    if acc.num_processes != world:
        raise RuntimeError(
            f"The launcher started {world} processes (WORLD_SIZE) but accelerate formed a run of "
            f"{acc.num_processes} (distributed_type={acc.distributed_type}, device={acc.device}): every process would "
            f"train on its own. Use device=cpu for CPU processes, or check the launcher's --nproc_per_node / "
            f"--num_processes and the accelerate config.")
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None:  # DeepSpeed wants the batch geometry up front; there is no dataloader to infer it from
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = geometry.local_micro
        plugin.deepspeed_config["gradient_accumulation_steps"] = geometry.accumulation_steps
        plugin.deepspeed_config["train_batch_size"] = geometry.mini
        plugin.deepspeed_config["gradient_clipping"] = float(cfg.train.max_grad_norm)
    return acc


class RunningMoments:
    """Running mean and standard deviation of all rewards seen so far (Chan et al. parallel update)."""

    def __init__(self) -> None:
        self.count = 0.0
        self.mean = 0.0
        self.var = 0.0

    @property
    def std(self) -> float:
        return self.var ** 0.5

    def update(self, x: torch.Tensor, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Fold in a batch ``x`` of shape ``(n,)`` (summed over processes with ``reduce``)."""
        x = x.detach().float()
        s = torch.stack([torch.tensor(float(x.numel()), device=x.device), x.sum()])
        if reduce is not None:
            s = reduce(s)
        n, total = float(s[0]), float(s[1])
        if n == 0:
            return
        bmean = total / n
        sq = ((x - bmean) ** 2).sum()
        if reduce is not None:
            sq = reduce(sq)
        bvar = float(sq) / n
        new_count = self.count + n
        delta = bmean - self.mean
        self.mean += delta * n / new_count
        self.var = (self.var * self.count + bvar * n + delta ** 2 * self.count * n / new_count) / new_count
        self.count = new_count

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, ("count", "mean", "var"), "the reward's running moments")
        self.count, self.mean, self.var = float(state["count"]), float(state["mean"]), float(state["var"])


def save_policy(policy, tokenizer, path: Path, merge_lora: bool = True,
                state_dict: Optional[dict] = None) -> None:
    """Save the policy in Hugging Face format (safetensors), its tokenizer, and the value head beside it.

    ``state_dict``: the full state dict of the :class:`~rlhf_exp.modeling.PolicyModel` (keys ``lm.*`` and
    ``value_head.*``), as ``accelerator.get_state_dict`` gathers it from a sharded engine (FSDP, ZeRO-3) on every
    rank; None: the module's own parameters (one process, DDP). Call it on one process only.

    A LoRA policy is saved merged into its base model (loadable like any model) unless ``merge_lora`` is false, in
    which case only the adapter is written (peft format).
    """
    import copy

    from safetensors.torch import save_file

    from rlhf_exp.modeling import is_peft_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    full = policy.state_dict() if state_dict is None else state_dict
    lm_state = {k[len("lm."):]: v for k, v in full.items() if k.startswith("lm.")}
    head_state = {k[len("value_head."):]: v for k, v in full.items() if k.startswith("value_head.")}
    lm = policy.lm
    if is_peft_model(lm) and merge_lora:
        if any(type(p).__name__ == "DTensor" or p.numel() == 0 for p in lm.parameters()):
            raise NotImplementedError(
                "Saving a LoRA policy merged from sharded parameters (FSDP/ZeRO-3) is not supported: set "
                "model.lora.save=adapter (the adapter in peft format) or model.lora.r=0.")
        merged = copy.deepcopy(lm)
        merged.load_state_dict(lm_state)
        merged.merge_and_unload().save_pretrained(path, safe_serialization=True)
    else:
        lm.save_pretrained(path, state_dict=lm_state, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if getattr(policy, "value_head", None) is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in head_state.items()}
        save_file(state, str(path / "value_head.safetensors"))


def save_run_policy(proc, policy, tokenizer, folder: Path, merge_lora: bool) -> dict[str, str]:
    """Save what a run trained, the prepared ``policy``, to ``folder`` (Hugging Face format; a LoRA policy merged
    unless ``merge_lora`` is false: ``model.lora.save=adapter``); return the summary entry naming it. Called on every
    process (``proc``: :class:`~rlhf_exp.train.context.ProcessContext`): the engine's full state dict is gathered
    collectively (``accelerator.get_state_dict``), then rank 0 alone writes, into a temporary folder that replaces
    ``folder`` when complete (a failed save leaves an earlier one as it was)."""
    from rlhf_exp.files import atomic_dir

    state = proc.acc.get_state_dict(policy)
    if proc.is_main:
        with atomic_dir(folder) as tmp:
            save_policy(proc.acc.unwrap_model(policy), tokenizer, tmp, merge_lora=merge_lora, state_dict=state)
    proc.acc.wait_for_everyone()
    return {"policy_dir": str(folder)}


def progress_bar(desc: str, total: int, enabled: bool = True, initial: int = 0):
    """The run's step bar (tqdm on stderr): redrawn at most every 0.5 s in a terminal and every 10 s in a log file;
    no bar at all for ``total == 0`` (``train.steps=0``: evaluate only) or on processes other than the main one.
    Advance it with :func:`advance_bar`, so that the counter and the postfix always describe the same step."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled or total <= 0, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


def advance_bar(bar, **postfix: str) -> None:
    """One step done: set the step's values, then move the counter (one redraw shows both)."""
    bar.set_postfix(postfix, refresh=False)
    bar.update(1)
