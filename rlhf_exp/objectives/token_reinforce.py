"""Token-level REINFORCE with per-token rewards ``(B, T)``.

Each response token gets its own reward: the reward model's per-token scores when it gives them (for example the
change in the sentiment score as each token is added, ``reward_model=tiny_sentiment_tokens``), otherwise the
sequence score on the last token; minus ``beta * KL_t`` on every token when the KL is in the reward (the default).
The return of token ``t`` is the discounted reward-to-go ``G_t``; advantages are ``G_t`` minus the mean over the
batch's real tokens (optionally whitened); ``loss = -mean_t(A_t * log pi(y_t | ...))`` over real tokens.
"""
from __future__ import annotations

from rlhf_exp.core.advantages import discounted_returns, kl_shaped_token_rewards
from rlhf_exp.core.losses import reinforce_loss
from rlhf_exp.core.masked import Reduce, masked_mean, masked_moments
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats


class TokenReinforce(OnlineObjective):
    """``objective=token_reinforce``; options in ``conf/objective/token_reinforce.yaml``."""

    name = "token_reinforce"
    default_kl_in_reward = True
    default_kl_estimator = "k1"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.gamma = float(cfg.get("gamma", 1.0))
        self.whiten = bool(cfg.get("whiten_advantages", True))

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        mask = batch["response_mask"]
        rewards = kl_shaped_token_rewards(batch["scores"], batch["kl"], mask, self.kl_in_reward_coef(kl_coef),
                                          batch.get("token_scores"))
        returns = discounted_returns(rewards, mask, self.gamma)
        _, mean, var = masked_moments(returns, mask, reduce)
        adv = (returns - mean) * mask
        if self.whiten:
            adv = adv / (var.sqrt() + 1e-8)
        batch["advantages"] = adv
        return {"token_reward_mean": masked_mean(rewards, mask), "returns_mean": mean}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        loss = reinforce_loss(out.logprobs, mb["advantages"], mb["response_mask"], self.loss_aggregation,
                              self.max_new_tokens)
        return loss, {"loss/policy": loss.detach()}
