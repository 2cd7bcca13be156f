"""Full PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022; the TRL 0.x recipe).

Per-token rewards are ``-beta * KL_t`` with the task score added on the last response token; a value head on the
policy gives ``V(s_t)``; advantages come from GAE(gamma, lam) and are whitened over the (global) batch; the loss is the
clipped surrogate plus ``vf_coef`` times the clipped value loss, minus the entropy bonus.
"""
from __future__ import annotations

from rlhf_exp.core.advantages import gae, kl_shaped_token_rewards, whiten_advantages
from rlhf_exp.core.losses import clipped_policy_loss, clipped_value_loss
from rlhf_exp.core.masked import Reduce, masked_mean
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats
from rlhf_exp.modeling import ResponseOutput


class PPO(OnlineObjective):
    """``objective=ppo``; options in ``conf/objective/ppo.yaml``."""

    name = "ppo"
    needs_value = True
    default_kl_in_reward = True
    default_kl_estimator = "k1"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.gamma = float(cfg.get("gamma", 1.0))
        self.lam = float(cfg.get("lam", 0.95))
        self.cliprange = float(cfg.get("cliprange", 0.2))
        self.cliprange_high = cfg.get("cliprange_high")
        cv = cfg.get("cliprange_value", 0.2)
        self.cliprange_value = None if cv is None else float(cv)
        self.vf_coef = float(cfg.get("vf_coef", 0.1))
        self.whiten = bool(cfg.get("whiten_advantages", True))

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        mask = batch["response_mask"]
        rewards = kl_shaped_token_rewards(batch["scores"], batch["kl"], mask, self.kl_in_reward_coef(kl_coef),
                                          batch.get("token_scores"))
        advantages, returns = gae(rewards, batch["old_values"], mask, self.gamma, self.lam)
        stats: Stats = {"advantages_mean_raw": masked_mean(advantages, mask), "returns_mean": masked_mean(returns, mask),
                        "values_mean": masked_mean(batch["old_values"], mask)}
        if self.whiten:
            advantages = whiten_advantages(advantages, mask, reduce=reduce)
        batch["advantages"] = advantages
        batch["returns"] = returns
        return stats

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        mask = mb["response_mask"]
        pg_loss, stats = clipped_policy_loss(
            out.logprobs, mb["old_logprobs"], mb["advantages"], mask, self.cliprange,
            None if self.cliprange_high is None else float(self.cliprange_high), self.loss_aggregation,
            self.max_new_tokens, self.clip_ratio_c,
        )
        vf_loss, vstats = clipped_value_loss(out.values, mb["old_values"], mb["returns"], mask, self.cliprange_value)
        stats = {**stats, **vstats, "loss/policy": pg_loss.detach(), "loss/value": vf_loss.detach()}
        return pg_loss + self.vf_coef * vf_loss, stats
