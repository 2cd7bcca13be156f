"""Token-level REINFORCE with per-token rewards ``(B, T)``.

Each response token gets its own reward: the reward model's per-token scores when it gives them (for example the
change in the sentiment score as each token is added, ``reward_model=tiny_sentiment_tokens``), otherwise the
sequence score on the last token; minus ``beta * KL_t`` on every token when the KL is in the reward (the default).
The return of token ``t`` is the discounted reward-to-go ``G_t``; advantages are ``G_t`` minus the mean over the
batch's real tokens (optionally whitened); ``loss = -mean_t(A_t * log pi(y_t | ...))`` over real tokens.

``importance_weighting=true`` (for minibatches after the first, whose samples come from an older policy) multiplies
every token's term of a response by the detached sequence weight ``pi(y|x) / pi_old(y|x)``, as ``reinforce`` does: the
return ``G_t`` depends on the whole response, so the whole response's ratio is the weight that keeps the gradient
unbiased (unclipped; a per-token, clipped ratio is what ``reinforce_pp`` and PPO use instead).
"""
from __future__ import annotations

from rlhf_exp.core.advantages import discounted_returns, kl_shaped_token_rewards
from rlhf_exp.core.losses import reinforce_loss
from rlhf_exp.core.masked import Reduce, masked_mean, masked_moments
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats
from rlhf_exp.objectives.reinforce import sequence_importance_weights


class TokenReinforce(OnlineObjective):
    """``objective=token_reinforce``; options in ``conf/objective/token_reinforce.yaml``."""

    name = "token_reinforce"
    default_kl_in_reward = True
    default_kl_estimator = "k1"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.gamma = float(cfg.get("gamma", 1.0))
        self.whiten = bool(cfg.get("whiten_advantages", True))
        # off-policy minibatches: weight each response's token terms by pi(y|x) / pi_old(y|x), detached
        self.importance_weighting = bool(cfg.get("importance_weighting", False))

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
        mask = mb["response_mask"]
        adv = mb["advantages"]                                   # (B, T)
        stats: Stats = {}
        if self.importance_weighting:
            w = sequence_importance_weights(out.logprobs.detach(), mb["old_logprobs"], mask)   # (B,)
            adv = adv * w.unsqueeze(1)
            stats["ratio_mean"] = w.mean()
        loss = reinforce_loss(out.logprobs, adv, mask, self.loss_aggregation, self.max_new_tokens)
        stats["loss/policy"] = loss.detach()
        return loss, stats
