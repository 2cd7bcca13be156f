"""Padding-free minibatches: each minibatch of a rollout is trained at its own longest prompt + response.

A rollout batch is padded to the longest prompt (on the left) and the longest response (on the right) of the whole
batch. A minibatch drawn from it usually has shorter rows only, so its leftmost prompt columns and its rightmost
response columns are padding in every row: they cost forward and backward compute and change nothing, because
attention ignores them (attention mask 0), position ids are counted from the first real token
(:func:`rlhf_exp.modeling.position_ids_from_mask`) and every loss term is masked by ``response_mask``.
:func:`trim_padding` drops those columns.

And no separate forward for the old log-probs where the update's own forward has them:
:func:`old_logprobs_from_update` says when (one optimizer step per rollout batch, nothing before the update reads
them) and :func:`fill_from_update` takes them, and the logged entropy, from that forward.

And micro-batches formed by a token budget rather than a row count (:func:`token_budget_micro_batches`): rows sorted
by length, so that long and short responses do not pad each other. Docs: docs/performance.md.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Union

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


def old_logprobs_from_update(objective, epochs: int, local_mini: int, local_batch: int,
                             separate_sampler: bool = False) -> bool:
    """Whether the old log-probs can be taken from the update's own forward instead of a no-grad policy forward.

    True when each rollout batch gets exactly one optimizer step (``train.epochs=1`` and one mini-batch per batch):
    every forward of that step runs on the weights that sampled, so its detached log-probs *are* the old log-probs
    (the ratio is exactly 1, as TRL's GRPOTrainer does when ``num_iterations=1`` and generation is aligned with the
    optimizer step), and when nothing computed before the update needs them: no critic (``old_values`` come from
    the same forward), the KL outside the reward (so the advantages do not read it), no ``kl.estimator=full`` (its
    exact KL needs the policy's logits before the update), no rollout hook that needs the scored rollout
    (``needs_policy_scored_rollout``: DAPO's dynamic sampling), no ``separate_sampler`` (``generation.backend=vllm``:
    the sampler correction compares them with the sampler's log-probs before the update).
    """
    return (epochs == 1 and local_mini >= local_batch and not separate_sampler and not objective.needs_value
            and not objective.kl_in_reward
            and objective.kl_estimator != "full" and not objective.needs_policy_scored_rollout)


def fill_from_update(batch: dict[str, torch.Tensor], idx: torch.Tensor, mb: dict[str, torch.Tensor], out) -> None:
    """In place: the micro-batch ``mb`` (rows ``idx`` of ``batch``, trimmed to ``T'`` response columns) gets
    ``old_logprobs`` = the detached log-probs of the update's forward ``out``; ``batch`` gets them and the entropy
    (detached, for ``train/entropy``) in rows ``idx``, columns ``:T'``. ``out.logits`` must be set."""
    lp = out.logprobs.detach()
    mb["old_logprobs"] = lp
    if out.entropy is not None:
        ent = out.entropy.detach()
    else:
        from rlhf_exp.core.losses import entropy_from_logits

        with torch.no_grad():
            ent = entropy_from_logits(out.logits.detach())
    Tp = lp.shape[1]
    batch["old_logprobs"][idx, :Tp] = lp.float()
    batch["entropy"][idx, :Tp] = ent.float()


def token_budget_micro_batches(prompt_lens: Union[Sequence[int], torch.Tensor],
                               response_lens: Union[Sequence[int], torch.Tensor], budget: int) -> list[list[int]]:
    """Forward/backward micro-batches of one mini-batch by a token budget (``train.micro_batch_tokens``).

    A micro-batch of rows ``S``, trimmed to its own padding (:func:`trim_padding`), costs
    ``|S| * (max_{i in S} prompt_lens[i] + max_{i in S} response_lens[i])`` padded positions. Rows are sorted by
    ``prompt_lens + response_lens``, longest first (ties: lower index first), and consecutive rows are grouped while
    the group's cost stays within ``budget``; a row whose own length exceeds the budget forms a micro-batch alone.
    Every row is in exactly one micro-batch; the result depends only on the lengths and the budget.

    Args:
        prompt_lens, response_lens: ``(n,)`` real tokens per row (the masks' row sums).
        budget: padded positions per micro-batch, ``>= 1``.
    Returns:
        Lists of row positions (indices into the inputs), longest rows first.
    """
    if budget < 1:
        raise ValueError(f"train.micro_batch_tokens must be >= 1, got {budget}.")
    p = [int(x) for x in (prompt_lens.tolist() if isinstance(prompt_lens, torch.Tensor) else prompt_lens)]
    r = [int(x) for x in (response_lens.tolist() if isinstance(response_lens, torch.Tensor) else response_lens)]
    if len(p) != len(r):
        raise ValueError(f"prompt_lens and response_lens differ in length ({len(p)} and {len(r)}).")
    order = sorted(range(len(p)), key=lambda i: (-(p[i] + r[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    max_p = max_r = 0
    for i in order:
        np_, nr = max(max_p, p[i]), max(max_r, r[i])
        if cur and (len(cur) + 1) * (np_ + nr) > budget:
            batches.append(cur)
            cur, np_, nr = [], p[i], r[i]
        cur.append(i)
        max_p, max_r = np_, nr
    if cur:
        batches.append(cur)
    return batches
