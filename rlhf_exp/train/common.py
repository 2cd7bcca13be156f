"""Pieces every loop shares: the accelerator, seeding, running reward statistics, saving the policy."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch


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


def make_accelerator(cfg):
    """An ``accelerate.Accelerator`` for ``cfg.device`` (auto | cpu | cuda) and ``cfg.train.mixed_precision``."""
    from accelerate import Accelerator

    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}: valid values are auto, cpu, cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is visible; use device=auto or device=cpu.")
    mp = str(cfg.train.get("mixed_precision", "no"))
    acc = Accelerator(cpu=(device == "cpu"), mixed_precision=mp)
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is not None:  # DeepSpeed wants the batch geometry up front; there is no dataloader to infer it from
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = int(cfg.train.mini_batch_size)
        plugin.deepspeed_config["gradient_accumulation_steps"] = 1
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


def save_policy(policy, tokenizer, path: Path, merge_lora: bool = True) -> None:
    """Save the policy in Hugging Face format (safetensors), its tokenizer, and the value head beside it.

    A LoRA policy is saved merged into its base model (loadable like any model) unless ``merge_lora`` is false, in
    which case only the adapter is written (peft format).
    """
    import copy

    from safetensors.torch import save_file

    from rlhf_exp.modeling import is_peft_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lm = policy.lm
    if is_peft_model(lm) and merge_lora:
        lm = copy.deepcopy(lm).merge_and_unload()
    lm.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if getattr(policy, "value_head", None) is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}
        save_file(state, str(path / "value_head.safetensors"))


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
