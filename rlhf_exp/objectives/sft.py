"""Supervised fine-tuning: next-token loss on the completion, prompt tokens masked.

Math: ``rlhf_exp.core.losses.next_token_loss``. The batch layout (:func:`sft_collate`) and the loss are the ones
``python -m rlhf_exp.task.build`` trains the embedded policy with (there the prompt is empty).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from rlhf_exp.core.losses import IGNORE_INDEX, next_token_loss
from rlhf_exp.objectives.offline_base import Context, Item, OfflineObjective, Stats
from rlhf_exp.rollout import pad_right


def sft_collate(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
                device: torch.device | str = "cpu", completion_masks: Optional[Sequence[Optional[Sequence[int]]]] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + completion`` sequences for :func:`next_token_loss`.

    Returns ``input_ids (B, L)``, ``attention_mask (B, L)`` and ``labels (B, L)``: the input ids with
    ``IGNORE_INDEX`` on prompt tokens and padding, so that only completion tokens (EOS included, when the caller
    appended it) take a loss. ``completion_masks`` (per example ``None`` or a 0/1 list as long as its completion)
    also ignores the completion tokens marked 0 (the user's turns inside a multi-turn conversation).
    """
    ids, mask = pad_right([list(p) + list(c) for p, c in zip(prompts, completions)], pad_id, device)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for i, p in enumerate(prompts):
        labels[i, :len(p)] = IGNORE_INDEX
        m = completion_masks[i] if completion_masks is not None else None
        if m is not None:
            keep = torch.tensor(list(m), dtype=torch.bool, device=labels.device)
            labels[i, len(p):len(p) + len(m)] = labels[i, len(p):len(p) + len(m)].masked_fill(~keep, IGNORE_INDEX)
    return ids, mask, labels


class SFT(OfflineObjective):
    name = "sft"
    data_format = "sft"
    summary_stats = ("loss/sft",)

    def encode(self, records: Sequence[Mapping[str, Any]], tokenizer) -> list[Item]:
        eos = tokenizer.eos_token_id
        out = []
        for r in records:
            if "completion_parts" in r:    # a rendered conversation: the loss is on the assistant's turns only
                p, c, m = self.tokenize_parts(tokenizer, r.get("prompt") or "", r["completion_parts"], eos)
                if any(m):
                    out.append({"prompt_ids": p, "completion_ids": c, "completion_mask": m})
                continue
            p, c = self.tokenize_pair(tokenizer, r.get("prompt") or "", r["completion"], eos)
            if p or len(c) > 1:          # an empty text has no token to predict
                out.append({"prompt_ids": p, "completion_ids": c})
        return out

    def weight(self, items: Sequence[Item]) -> float:
        # Tokens that take a loss (the first token of a prompt-less text is never predicted).
        total = 0
        for it in items:
            m = it.get("completion_mask") or [1] * len(it["completion_ids"])
            total += sum(m) - (0 if it["prompt_ids"] else m[0])
        return float(total)

    def loss(self, model, ref, items: Sequence[Item], ctx: Context) -> tuple[torch.Tensor, Stats]:
        ids, mask, labels = sft_collate([it["prompt_ids"] for it in items], [it["completion_ids"] for it in items],
                                        ctx.pad_id, ctx.device, [it.get("completion_mask") for it in items])
        logits, _ = model(ids, mask, ids.shape[1] - 1)      # (B, L-1, V): the logits that predict tokens 1..L-1
        loss = next_token_loss(logits, labels)
        return loss, {"loss/sft": loss.detach()}
