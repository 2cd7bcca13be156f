"""This process's place in a run, as every loop component needs it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from rlhf_exp.core.masked import masked_moments


@dataclass(frozen=True)
class ProcessContext:
    """The accelerator and what follows from it: ``device``, ``world`` (processes), ``rank``, ``is_main`` and
    ``reduce`` (a sum over processes, or None in one process: what the math layer's global statistics take).
    Built once by a trainer (:meth:`of`) and handed to the components that need it."""

    acc: Any
    device: torch.device
    world: int
    rank: int
    is_main: bool
    reduce: Optional[Callable[[torch.Tensor], torch.Tensor]]

    @classmethod
    def of(cls, accelerator) -> "ProcessContext":
        world = int(accelerator.num_processes)
        reduce = (lambda t: accelerator.reduce(t, reduction="sum")) if world > 1 else None
        return cls(acc=accelerator, device=accelerator.device, world=world, rank=int(accelerator.process_index),
                   is_main=bool(accelerator.is_main_process), reduce=reduce)

    def global_mean(self, x: torch.Tensor) -> float:
        """Mean of a 1-D tensor over every process's entries."""
        _, mean, _ = masked_moments(x.float(), torch.ones_like(x, dtype=torch.float), self.reduce)
        return float(mean)

    def global_std(self, x: torch.Tensor) -> float:
        """Standard deviation of a 1-D tensor over every process's entries."""
        _, _, var = masked_moments(x.float(), torch.ones_like(x, dtype=torch.float), self.reduce)
        return float(var.sqrt())
