"""KTO on unpaired examples (prompt, completion, desirable or not), against a frozen reference.

The reference point ``z0`` (an estimate of KL(policy || reference)) is computed, without gradient, from the
micro-batch's completions paired with the *previous* example's prompt (TRL's construction), averaged over processes
and clipped at 0. A training micro-batch needs at least 2 examples per process (``train.micro_batch_size``, checked
before the run starts); a held-out chunk of 1 adds no pair.

Math: ``rlhf_exp.core.preference.kto_loss`` and ``kto_reference_point``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from rlhf_exp.core.preference import kto_loss, kto_reference_point
from rlhf_exp.core.registry import Param
from rlhf_exp.objectives.offline_base import Context, Item, OfflineObjective, Stats, sequence_logprobs


class KTO(OfflineObjective):
    name = "kto"
    params = OfflineObjective.params + (
        Param("beta", float, "strength of the implicit KL constraint", "> 0", lambda v: v > 0),
        Param("desirable_weight", float, "lambda_D, the weight of desirable examples", "> 0", lambda v: v > 0),
        Param("undesirable_weight", float, "lambda_U, the weight of undesirable examples", "> 0", lambda v: v > 0),
    )
    min_local_micro_batch = 2      # each completion is paired with another example's prompt (the reference point)
    data_format = "unpaired"
    needs_reference = True
    summary_stats = ("loss/kto",)

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.beta = float(cfg["beta"])
        self.desirable_weight = float(cfg["desirable_weight"])
        self.undesirable_weight = float(cfg["undesirable_weight"])

    def encode(self, records: Sequence[Mapping[str, Any]], tokenizer) -> list[Item]:
        eos = tokenizer.eos_token_id
        out = []
        for r in records:
            p, c = self.tokenize_pair(tokenizer, r["prompt"], r["completion"], eos)
            out.append({"prompt_ids": p, "completion_ids": c, "label": bool(r["label"])})
        return out

    def loss(self, model, ref, items: Sequence[Item], ctx: Context) -> tuple[torch.Tensor, Stats]:
        B = len(items)
        if B < 1:
            raise ValueError("objective=kto got an empty micro-batch.")
        prompts = [it["prompt_ids"] for it in items]
        completions = [it["completion_ids"] for it in items]
        # Example i's prompt with example i-1's completion. A lone example (a held-out chunk of 1; training
        # micro-batches have >= 2 per process) has no other completion: it adds no pair, and z0 comes from the
        # other processes' pairs (0 if none), with the same collective call on every process.
        pairs = B if B > 1 else 0
        shifted = completions[-1:] + completions[:-1]
        logps = sequence_logprobs(model, prompts, completions, ctx)
        with torch.no_grad():
            if pairs:
                kl_logps = sequence_logprobs(model, prompts, shifted, ctx)
                ref_all = sequence_logprobs(ref, prompts + prompts, completions + shifted, ctx)
                ref_logps, mismatched = ref_all[:B], kl_logps - ref_all[B:]
            else:
                ref_logps = sequence_logprobs(ref, prompts, completions, ctx)
                mismatched = logps.detach()[:0]
        z0 = kto_reference_point(mismatched, ctx.reduce)
        desirable = torch.tensor([it["label"] for it in items], device=logps.device)
        ratios = logps - ref_logps
        loss = kto_loss(ratios, desirable, z0, self.beta, self.desirable_weight, self.undesirable_weight).mean()
        stats: Stats = {"loss/kto": loss.detach(), "kl_reference_point": z0}
        with torch.no_grad():   # NaN when the micro-batch has none of that class (the loop skips it)
            r = self.beta * ratios.detach()
            stats["rewards/desirable"] = r[desirable].mean() if bool(desirable.any()) else math.nan
            stats["rewards/undesirable"] = r[~desirable].mean() if bool((~desirable).any()) else math.nan
        return loss, stats
