"""ReMax (Li et al., 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning
Large Language Models"): REINFORCE whose baseline is the reward of the greedy response to the same prompt.

Per prompt the loop samples one response ``y`` and decodes one greedy response ``y_greedy`` (same length limit);
``b(x) = r(x, y_greedy)``, the task reward only (no KL), preprocessed like the sampled response's score. The
advantages follow verl's ``core_algos.compute_remax_outcome_advantage``: per token, the reward-to-go of the token
rewards (the task score on the last token, ``-beta * KL_t`` on every token when the KL is in the reward, the default)
minus ``b(x)``. The loss is the token-level clipped surrogate (verl's actor loss; with the default one optimizer step
per rollout batch the ratio is 1 and this is exactly REINFORCE), summed over each response's tokens by default.
"""
from __future__ import annotations

import torch

from rlhf_exp.core.advantages import discounted_returns, kl_shaped_token_rewards
from rlhf_exp.core.losses import clipped_policy_loss
from rlhf_exp.core.masked import Reduce
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats


def remax_advantages(token_rewards: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A_t = sum_{k >= t} r_k - b`` on real tokens, 0 on padding. ``(B, T), (B,), (B, T) -> (B, T)``."""
    m = mask.to(token_rewards.dtype)
    return (discounted_returns(token_rewards, mask, 1.0) - baseline.to(token_rewards.dtype).unsqueeze(1)) * m


class ReMax(OnlineObjective):
    """``objective=remax``; options in ``conf/objective/remax.yaml``."""

    name = "remax"
    default_kl_in_reward = True
    default_kl_estimator = "k1"
    needs_greedy_baseline = True

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.cliprange = float(cfg.get("cliprange", 0.2))
        if self.group_size != 1:
            raise ValueError("objective=remax samples one response per prompt (its baseline is the greedy one): "
                             f"objective.group_size must be 1, got {self.group_size}.")

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        if "baseline_scores" not in batch:
            raise KeyError("objective=remax needs batch['baseline_scores'], the reward of the greedy response.")
        mask = batch["response_mask"]
        rewards = kl_shaped_token_rewards(batch["scores"], batch["kl"], mask, self.kl_in_reward_coef(kl_coef),
                                          batch.get("token_scores"))
        adv = remax_advantages(rewards, batch["baseline_scores"], mask)
        batch["advantages"] = adv
        seq_adv = adv[:, 0]
        return {"seq_advantage_mean": seq_adv.mean(), "sampled_beats_greedy_frac": (seq_adv > 0).float().mean()}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        loss, stats = clipped_policy_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                                          self.cliprange, None, self.loss_aggregation, self.max_new_tokens,
                                          self.clip_ratio_c)
        return loss, {**stats, "loss/policy": loss.detach()}
