"""Reward modelling: a scalar-head sequence classifier trained with the Bradley-Terry loss on preference pairs.

The model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` initialised from ``model.path`` (the SFT
policy, as in InstructGPT); its logit is the reward. Texts are ``prompt + completion`` tokenised, truncated (on the left:
the end of the response is what is judged) and padded the way ``reward_model=learned`` scores them in the online loop
(:func:`rlhf_exp.rewards.hf_classifier.encode_texts`), so the held-out pairwise accuracy logged here is the accuracy
of the reward PPO will see. A tokenizer without a pad token pads with EOS, and the model's ``config.pad_token_id``
is set to it (sequence classification reads the last non-pad token). Saved to ``<run dir>/reward_model``.

Math: ``rlhf_exp.core.preference.bradley_terry_loss`` and ``pairwise_accuracy``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from rlhf_exp.core.preference import bradley_terry_loss, pairwise_accuracy
from rlhf_exp.core.registry import Param
from rlhf_exp.modeling import (
    disable_dropout, enable_gradient_checkpointing, from_pretrained_checked, resolve_pretrained,
)
from rlhf_exp.objectives.offline_base import Context, Item, OfflineObjective, Stats
from rlhf_exp.rewards.hf_classifier import encode_texts
from rlhf_exp.rollout import pad_right

REWARD_MODEL_DIR = "reward_model"   # where a reward run saves its model, inside the run folder


class RewardModelling(OfflineObjective):
    name = "reward"
    params = OfflineObjective.params + (
        Param("center_rewards_coefficient", float, "weight of mean((r_chosen + r_rejected)^2), which keeps rewards "
              "centred at 0; null = off", ">= 0", lambda v: v >= 0, nullable=True),
        Param("use_margin", bool, "subtract the dataset's margin column inside the sigmoid"),
    )
    data_format = "preference"
    trains_policy = False
    summary_stats = ("loss/bt", "accuracy")

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.center_coef = float(cfg["center_rewards_coefficient"] or 0.0)     # null: off
        self.use_margin = bool(cfg["use_margin"])

    def build_model(self, model_cfg: Mapping[str, Any]) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging

        path = resolve_pretrained(model_cfg["path"], "model.path")
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()   # the new score head is reported as "newly initialized": expected
        try:
            model = from_pretrained_checked(AutoModelForSequenceClassification, path, "model.path",
                                            model_cfg["path"], num_labels=1)
        finally:
            logging.set_verbosity(verbosity)
        if int(model_cfg["lora"]["r"]) > 0:
            raise ValueError("objective=reward trains the whole model (a new score head on the LM); model.lora is "
                             "only for policy training. Set model.lora.r=0.")
        if model_cfg["gradient_checkpointing"]:
            enable_gradient_checkpointing(model)
        return disable_dropout(model)

    def bind_tokenizer(self, model, tokenizer) -> None:
        """Give the classifier the tokenizer's pad id (EOS for GPT-2 as it ships): without one it cannot find the
        last real token of a padded batch."""
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    def encode(self, records: Sequence[Mapping[str, Any]], tokenizer) -> list[Item]:
        # The same encoding HFClassifierReward uses on prompt + completion at scoring time (left truncation).
        def enc(texts):
            return encode_texts(tokenizer, list(texts), self.max_length, "left")

        chosen = enc(r["prompt"] + r["chosen"] for r in records)
        rejected = enc(r["prompt"] + r["rejected"] for r in records)
        out = []
        for r, c, j in zip(records, chosen, rejected):
            item = {"chosen_ids": c, "rejected_ids": j}
            if self.use_margin:
                if "margin" not in r:
                    raise ValueError("objective.use_margin=true but the dataset has no margin column; set "
                                     "dataset.columns.margin=<column> or objective.use_margin=false.")
                item["margin"] = float(r["margin"])
            out.append(item)
        return out

    def scores(self, model, seqs: Sequence[list[int]], ctx: Context) -> torch.Tensor:
        """``(B,)`` scalar scores of right-padded token sequences (the classifier reads the last real token)."""
        ids, mask = pad_right(seqs, ctx.pad_id, ctx.device)
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()

    def loss(self, model, ref, items: Sequence[Item], ctx: Context) -> tuple[torch.Tensor, Stats]:
        B = len(items)
        s = self.scores(model, [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items], ctx)
        chosen, rejected = s[:B], s[B:]
        margin = (torch.tensor([it["margin"] for it in items], device=s.device) if self.use_margin else None)
        loss = bradley_terry_loss(chosen, rejected, margin, self.center_coef)
        with torch.no_grad():
            stats = {"loss/bt": loss.detach(), "accuracy": pairwise_accuracy(chosen, rejected),
                     "margin": (chosen - rejected).mean(), "score_mean": s.mean(), "score_std": s.std()}
        return loss, stats
