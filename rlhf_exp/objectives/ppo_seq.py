"""PPO's clipped surrogate on the sequence-level ratio ``pi(y|x) / pi_old(y|x)`` (no critic).

Advantages are per sequence: the reward (KL in the reward by default) minus a baseline (the group mean when
``group_size > 1``, else the batch mean), optionally whitened. ``ratio: sum`` uses the full sequence ratio;
``ratio: mean`` the length-normalised one (GSPO, Zheng et al. 2025).
"""
from __future__ import annotations

import torch

from rlhf_exp.core.advantages import group_view
from rlhf_exp.core.losses import clipped_sequence_loss
from rlhf_exp.core.masked import Reduce, masked_moments
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats


class PPOSeq(OnlineObjective):
    """``objective=ppo_seq``; options in ``conf/objective/ppo_seq.yaml``."""

    name = "ppo_seq"
    default_kl_in_reward = True
    default_kl_estimator = "k1"
    token_level_policy_loss = False   # the sequence ratio: no per-token importance weights

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.cliprange = float(cfg.get("cliprange", 0.2))
        ch = cfg.get("cliprange_high")
        self.cliprange_high = None if ch is None else float(ch)
        self.ratio = str(cfg.get("ratio", "sum"))
        if self.ratio not in ("sum", "mean"):
            raise ValueError(f"objective.ratio={self.ratio!r}. Valid: sum, mean.")
        self.whiten = bool(cfg.get("whiten_advantages", True))

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        R = self.sequence_rewards(batch, kl_coef)
        ones = torch.ones_like(R)
        if self.group_size > 1:
            g = group_view(R, self.group_size)
            adv = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
        else:
            adv = R - masked_moments(R, ones, reduce)[1]
        if self.whiten:
            _, _, var = masked_moments(adv, ones, reduce)
            adv = adv / (var.sqrt() + 1e-8)
        batch["advantages"] = adv
        return {"seq_reward_mean": R.mean()}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        loss, stats = clipped_sequence_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                                            self.cliprange, self.cliprange_high, self.ratio)
        return loss, {**stats, "loss/policy": loss.detach()}
