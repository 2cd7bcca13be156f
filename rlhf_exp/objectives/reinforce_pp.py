"""REINFORCE++ (Hu, 2025): PPO's tricks without a critic.

Per-token rewards are ``-beta * KL_t`` on every token with the task score on the last token (KL in the reward); the
return of each token is its reward-to-go (``gamma`` = 1 by default); advantages are those returns whitened over all
real tokens of the *global* batch; the loss is the token-level clipped surrogate. ``group_baseline: true`` first
subtracts each prompt group's mean score (the "REINFORCE++-baseline" variant, with ``group_size > 1``).
"""
from __future__ import annotations

from rlhf_exp.core.advantages import (
    discounted_returns, group_view, kl_shaped_token_rewards, place_on_last_token, whiten_advantages,
)
from rlhf_exp.core.losses import clipped_policy_loss
from rlhf_exp.core.masked import Reduce, masked_mean
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats


class ReinforcePP(OnlineObjective):
    """``objective=reinforce_pp``; options in ``conf/objective/reinforce_pp.yaml``."""

    name = "reinforce_pp"
    default_kl_in_reward = True
    default_kl_estimator = "k1"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.gamma = float(cfg.get("gamma", 1.0))
        self.cliprange = float(cfg.get("cliprange", 0.2))
        self.group_baseline = bool(cfg.get("group_baseline", False))
        if self.group_baseline and self.group_size < 2:
            raise ValueError("objective.group_baseline=true needs objective.group_size >= 2.")

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        mask = batch["response_mask"]
        scores, token_scores = batch["scores"], batch.get("token_scores")
        if self.group_baseline:
            # The baseline is the group mean of each response's total task reward; with per-token rewards it is
            # subtracted on the last token, where a sequence score would sit.
            totals = scores if token_scores is None else (token_scores * mask).sum(dim=1)
            base = group_view(totals, self.group_size).mean(dim=1, keepdim=True)
            base = base.expand(-1, self.group_size).reshape(-1)
            if token_scores is None:
                scores = scores - base
            else:
                token_scores = token_scores - place_on_last_token(base, mask)
        rewards = kl_shaped_token_rewards(scores, batch["kl"], mask, self.kl_in_reward_coef(kl_coef), token_scores)
        returns = discounted_returns(rewards, mask, self.gamma)
        batch["advantages"] = whiten_advantages(returns, mask, reduce=reduce)
        return {"returns_mean": masked_mean(returns, mask)}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        loss, stats = clipped_policy_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                                          self.cliprange, None, self.loss_aggregation, self.max_new_tokens,
                                          self.clip_ratio_c)
        return loss, {**stats, "loss/policy": loss.detach()}
