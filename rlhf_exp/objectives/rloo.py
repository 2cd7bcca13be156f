"""RLOO, REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024, "Back to Basics").

``G = group_size`` completions per prompt; the sequence reward includes the summed KL penalty (KL in the reward);
each completion's baseline is the mean reward of the other ``G - 1``. The loss is the token-level clipped surrogate
with the sequence advantage on every token (with one epoch, the plain REINFORCE gradient), summed over each
response's tokens by default (``seq-mean-token-sum``: the gradient of the sequence log-probability).
"""
from __future__ import annotations

import torch

from rlhf_exp.core.advantages import leave_one_out_baseline
from rlhf_exp.core.losses import clipped_policy_loss
from rlhf_exp.core.masked import Reduce, masked_moments
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats


class RLOO(OnlineObjective):
    """``objective=rloo``; options in ``conf/objective/rloo.yaml``."""

    name = "rloo"
    default_kl_in_reward = True
    default_kl_estimator = "k1"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.cliprange = float(cfg.get("cliprange", 0.2))
        self.normalize = bool(cfg.get("normalize_advantages", False))
        if self.group_size < 2:
            raise ValueError("objective=rloo needs objective.group_size >= 2 (completions per prompt).")

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        R = self.sequence_rewards(batch, kl_coef)
        adv = R - leave_one_out_baseline(R, self.group_size)
        if self.normalize:
            _, mean, var = masked_moments(adv, torch.ones_like(adv), reduce)
            adv = (adv - mean) / (var.sqrt() + 1e-8)
        batch["advantages"] = adv.unsqueeze(1) * batch["response_mask"]
        return {"seq_reward_mean": R.mean()}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        loss, stats = clipped_policy_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                                          self.cliprange, None, self.loss_aggregation, self.max_new_tokens,
                                          self.clip_ratio_c)
        return loss, {**stats, "loss/policy": loss.detach()}
