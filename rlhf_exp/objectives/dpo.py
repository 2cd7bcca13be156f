"""DPO and its variants (IPO, hinge/SLiC, robust DPO) on preference pairs, against a frozen reference.

Per pair: the chosen and rejected completions (EOS appended) are scored given the prompt by the policy and by the
reference (the initial policy, or reference log-probs precomputed once before training with
``objective.precompute_ref_logprobs=true``); their log-ratios enter ``dpo_loss``.

Math: ``rlhf_exp.core.preference.dpo_loss`` and ``implicit_reward_stats``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from rlhf_exp.core.preference import DPO_LOSS_TYPES, LENGTH_NORMALIZED_DPO_LOSSES, dpo_loss, implicit_reward_stats
from rlhf_exp.core.registry import Param
from rlhf_exp.objectives.offline_base import Context, Item, OfflineObjective, Stats, sequence_logprobs
from rlhf_exp.objectives.validation import ObjectiveConfigError


class DPO(OfflineObjective):
    name = "dpo"
    params = OfflineObjective.params + (
        Param("loss_type", str, "sigmoid (DPO) | ipo | hinge (SLiC) | robust (rDPO)", choices=DPO_LOSS_TYPES),
        Param("beta", float, "inverse temperature of the implicit reward (IPO: its tau)", "> 0", lambda v: v > 0),
        Param("label_smoothing", float, "sigmoid: cDPO smoothing; robust: the assumed label flip rate", "in [0, 0.5)",
              lambda v: 0 <= v < 0.5),
        Param("precompute_ref_logprobs", bool, "score the reference once before training instead of at every step"),
    )
    data_format = "preference"
    needs_reference = True
    summary_stats = ("loss/dpo", "rewards/accuracy")

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.beta = float(cfg["beta"])
        self.loss_type = str(cfg["loss_type"])
        self.label_smoothing = float(cfg["label_smoothing"])
        self.precompute = bool(cfg["precompute_ref_logprobs"])
        self.reduction = "mean" if self.loss_type in LENGTH_NORMALIZED_DPO_LOSSES else "sum"

    @classmethod
    def validate(cls, block: Mapping[str, Any]) -> None:
        super().validate(block)
        if block["label_smoothing"] and block["loss_type"] not in ("sigmoid", "robust"):
            raise ObjectiveConfigError(f"objective.label_smoothing applies to loss_type sigmoid (cDPO) and robust, "
                                       f"not {block['loss_type']} (objective=dpo).")

    def encode(self, records: Sequence[Mapping[str, Any]], tokenizer) -> list[Item]:
        eos = tokenizer.eos_token_id
        out = []
        for r in records:
            p, c = self.tokenize_pair(tokenizer, r["prompt"], r["chosen"], eos)
            p2, j = self.tokenize_pair(tokenizer, r["prompt"], r["rejected"], eos)
            # Both completions must see the same prompt: keep the shorter cut of it.
            p = p if len(p) <= len(p2) else p2
            out.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": j})
        return out

    def _logps(self, model, items: Sequence[Item], ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected sequence log-probs ``(B,)`` each, in one forward over the 2B completions."""
        prompts = [it["prompt_ids"] for it in items]
        completions = [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items]
        lp = sequence_logprobs(model, prompts + prompts, completions, ctx, self.reduction)
        return lp[:len(items)], lp[len(items):]

    @torch.no_grad()
    def prepare(self, items: list[Item], ref, ctx: Context, batch_size: int) -> None:
        if not self.precompute:
            return
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            c, r = self._logps(ref, chunk, ctx)
            for it, a, b in zip(chunk, c.tolist(), r.tolist()):
                it["ref_chosen"], it["ref_rejected"] = a, b

    def loss(self, model, ref, items: Sequence[Item], ctx: Context) -> tuple[torch.Tensor, Stats]:
        chosen, rejected = self._logps(model, items, ctx)
        if "ref_chosen" in items[0]:
            ref_chosen = torch.tensor([it["ref_chosen"] for it in items], device=chosen.device)
            ref_rejected = torch.tensor([it["ref_rejected"] for it in items], device=chosen.device)
        else:
            with torch.no_grad():
                ref_chosen, ref_rejected = self._logps(ref, items, ctx)
        c_ratio, r_ratio = chosen - ref_chosen, rejected - ref_rejected
        loss = dpo_loss(c_ratio, r_ratio, self.beta, self.loss_type, self.label_smoothing).mean()
        stats: Stats = {"loss/dpo": loss.detach(), **implicit_reward_stats(c_ratio, r_ratio, self.beta),
                        "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}
        return loss, stats
