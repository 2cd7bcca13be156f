"""Padding-free minibatches: each minibatch of a rollout is trained at its own longest prompt + response.

A rollout batch is padded to the longest prompt (on the left) and the longest response (on the right) of the whole
batch. A minibatch drawn from it usually has shorter rows only, so its leftmost prompt columns and its rightmost
response columns are padding in every row: they cost forward and backward compute and change nothing, because
attention ignores them (attention mask 0), position ids are counted from the first real token
(:func:`rlhf_exp.modeling.position_ids_from_mask`) and every loss term is masked by ``response_mask``.
:func:`trim_padding` drops those columns.
"""
from __future__ import annotations

from typing import Mapping

import torch

PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def padding_bounds(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """``(first, end)``: the prompt columns ``first:`` and the response columns ``:end`` that hold a real token in
    at least one row. ``prompt_mask (b, P)`` left-padded, ``response_mask (b, T)`` right-padded. At least one column
    of each is kept (``first <= P - 1``, ``end >= 1``), so an all-padding side keeps its shape valid."""
    P, T = prompt_mask.shape[1], response_mask.shape[1]
    used_p = prompt_mask.bool().any(dim=0)
    used_r = response_mask.bool().any(dim=0)
    first = int(used_p.float().argmax()) if bool(used_p.any()) else P - 1
    end = T - int(used_r.flip(0).float().argmax()) if bool(used_r.any()) else 1
    return min(first, P - 1), max(end, 1)


def trim_padding(mb: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of minibatch ``mb`` without its all-padding prompt columns (left) and response columns (right).

    ``prompt_ids``/``prompt_mask`` ``(b, P)`` lose their leading columns where every row is padding; every other
    tensor whose second dimension is the response length ``T`` (``response_ids``, ``response_mask``,
    ``old_logprobs``, ``ref_logprobs``, ``kl``, ``advantages``, ``returns``, ``old_values``, ``token_scores`` ...)
    loses its trailing all-padding columns; ``(b,)`` tensors are unchanged. Slices are views (no copy).
    """
    first, end = padding_bounds(mb["prompt_mask"], mb["response_mask"])
    T = mb["response_mask"].shape[1]
    out: dict[str, torch.Tensor] = {}
    for k, v in mb.items():
        if k in PROMPT_KEYS:
            out[k] = v[:, first:]
        elif isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == T:
            out[k] = v[:, :end]
        else:
            out[k] = v
    return out
