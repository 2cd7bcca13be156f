"""The AdamW the loops train with, and which of PyTorch's implementations runs it (``train.adamw_impl``).

PyTorch's AdamW has three implementations of the same update: ``for-loop`` (one parameter tensor at a time, its
default on CPU), ``foreach`` (the same operations batched over all tensors with ``torch._foreach_*``: the same
numbers, bit for bit) and ``fused`` (one kernel per step; CPU and CUDA; its arithmetic is ordered differently, so
parameters differ by rounding, about 3e-8 after 20 steps of the embedded policy). Measured in docs/performance.md.
"""
from __future__ import annotations

from typing import Iterable

import torch

ADAMW_IMPLS = ("foreach", "fused", "for-loop")


def adamw_impl_kwargs(impl: str) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments that select ``impl`` (one of :data:`ADAMW_IMPLS`)."""
    if impl == "foreach":
        return {"foreach": True}
    if impl == "fused":
        return {"fused": True}
    if impl == "for-loop":
        return {"foreach": False}
    raise ValueError(f"train.adamw_impl={impl!r}. Valid: {', '.join(ADAMW_IMPLS)} (foreach: the default, the same "
                     f"numbers as for-loop, faster; fused: fastest, equal up to rounding).")


def make_adamw(params: Iterable[torch.nn.Parameter], tcfg) -> torch.optim.AdamW:
    """AdamW over the trainable ``params`` with ``train.lr``, ``adam_betas``, ``adam_eps``, ``weight_decay`` and
    ``adamw_impl``."""
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=tcfg.lr, betas=tuple(tcfg.adam_betas), eps=tcfg.adam_eps,
        weight_decay=tcfg.weight_decay, **adamw_impl_kwargs(str(tcfg.adamw_impl)),
    )
