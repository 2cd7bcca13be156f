"""Masked reductions over response tokens.

Conventions used across :mod:`rlhf_exp.core`:

* ``B`` is the batch (sequences), ``T`` the response length (padded on the right).
* ``mask`` is a ``(B, T)`` tensor of 0/1 (bool or float) marking real response tokens: prompt and padding
  positions are 0 and never enter a loss or a mean.
* ``reduce`` is an optional callable that sums a tensor across processes (an all-reduce). It is the identity in a
  single process; the training loop passes a real one under ``torchrun``/``accelerate`` so that statistics such as
  advantage whitening are computed over the *global* batch. The math stays pure either way.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Reduce = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is set.

    Args:
        x: ``(B, T)`` (or any shape broadcastable with ``mask``).
        mask: same shape, 0/1.
        dim: reduce over this dim, or over everything when ``None``.
    Returns:
        A scalar, or ``x`` reduced over ``dim``.
    """
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of ``x`` over masked entries; 0 where nothing is masked in (a defined result instead of NaN).

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` 0/1.
        dim: ``None`` for the mean over all masked tokens, ``1`` for a per-sequence mean ``(B,)``.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


def masked_moments(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global count, mean and *unbiased* variance of the masked entries of ``x``.

    With ``reduce`` (an all-reduce sum) the moments span every process's batch. With fewer than two entries the
    variance is defined as 0 (whitening a single element gives 0, not NaN).

    Returns:
        ``(count, mean, var)``, three scalars.
    """
    reduce = reduce or _identity
    m = mask.to(x.dtype)
    stats = reduce(torch.stack([m.sum(), (x * m).sum()]))
    count, total = stats[0], stats[1]
    mean = total / count.clamp(min=1.0)
    sq = reduce(((x - mean) ** 2 * m).sum())
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1.0), torch.zeros_like(sq))
    return count, mean, var


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, reduce: Reduce = None) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (unbiased by default; 0 for fewer than two entries)."""
    count, _, var = masked_moments(x, mask, reduce)
    if not unbiased:
        var = var * (count - 1).clamp(min=0.0) / count.clamp(min=1.0)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, reduce: Reduce = None
) -> torch.Tensor:
    """Normalise ``x`` to zero mean and unit variance over its masked entries.

    ``(x - mean) / sqrt(var + eps)`` with the unbiased variance; with ``shift_mean=False`` the mean is added back
    (only the scale changes), as PPO implementations do for advantages when asked. Masked-out entries are returned
    as 0 so they can never leak into a later reduction.

    Args:
        x: ``(B, T)``; mask: ``(B, T)`` 0/1.
    Returns:
        ``(B, T)``.
    """
    _, mean, var = masked_moments(x, mask, reduce)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)
