"""DAPO's dynamic sampling (Yu et al., 2025): keep only prompt groups whose rewards differ, refill the batch.

With group-relative advantages (GRPO, RLOO, ...) a group whose ``G`` completions all got the same reward has zero
advantage everywhere and contributes no policy gradient, only a smaller effective batch. Dynamic sampling drops such
groups and samples more prompts until the batch is full again, up to ``objective.dynamic_sampling.max_tries``
generation rounds per step. This follows verl's DAPO recipe (``algorithm.filter_groups``: keep a group when the
standard deviation of its metric is > 0, generate further batches up to ``max_num_gen_batches``) with one
difference: where verl raises an error when the cap is reached, we fill the rest of the batch with the dropped
groups (they add no gradient) and log how many, so a long run does not stop.

The pure helpers here work on rollout batches (``dict[str, Tensor]``, see :mod:`rlhf_exp.objectives.base`); the
``dynamic_sampling`` rollout hook (:class:`rlhf_exp.objectives.hooks.DynamicSampling`) drives them.
"""
from __future__ import annotations

from typing import Sequence

import torch


def varied_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups have rewards that are not all equal. ``(B,) -> (B // G,)`` bool.

    ``B`` must be a multiple of ``G``; the ``G`` completions of one prompt are consecutive rows.
    """
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}.")
    g = scores.float().reshape(-1, group_size)
    return (g.max(dim=1).values - g.min(dim=1).values) > 0


def concat_rollouts(batches: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate rollout batches whose padded widths differ, along the batch dimension.

    ``prompt_*`` tensors ``(B_i, P_i)`` are left-padded to the widest ``P``, response tensors ``(B_i, T_i)`` are
    right-padded to the widest ``T`` (ids with ``pad_id``, masks and float values with 0); ``(B_i,)`` tensors are
    concatenated. Every batch must have the same keys.
    """
    keys = list(batches[0])
    for b in batches[1:]:
        if set(b) != set(keys):
            raise ValueError(f"Rollout batches with different keys: {sorted(keys)} vs {sorted(b)}.")
    out = {}
    for k in keys:
        parts = [b[k] for b in batches]
        if parts[0].dim() == 2:
            width = max(p.shape[1] for p in parts)
            value = pad_id if k.endswith("_ids") else 0
            left = k.startswith("prompt_")
            parts = [torch.nn.functional.pad(p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]),
                                             value=value) for p in parts]
        out[k] = torch.cat(parts, dim=0)
    return out


def select_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``rows`` (``(n,)`` long) of every tensor of a rollout batch."""
    return {k: v[rows.to(v.device)] for k, v in batch.items()}


def group_rows(groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """Row indices of the completions of the given groups, in order. ``(n,) -> (n * G,)`` long."""
    return (groups.long().unsqueeze(1) * group_size + torch.arange(group_size)).reshape(-1)
