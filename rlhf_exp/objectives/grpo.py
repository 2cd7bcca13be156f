"""GRPO (Shao et al., 2024, DeepSeekMath) and its common variants.

``G = group_size`` completions per prompt; each completion's advantage is its reward minus the group mean, divided by
the group std (``scale_rewards=group``), the batch std (``batch``) or nothing (``none``, Dr. GRPO), broadcast to its
tokens. The loss is the token-level clipped surrogate with ``[1 - clip_low, 1 + clip_high]`` (asymmetric clipping as
in DAPO), aggregated by ``loss_aggregation`` (``seq-mean-token-mean`` = original GRPO, ``token-mean`` = DAPO,
``seq-mean-token-sum-norm`` = Dr. GRPO's constant normaliser ``max_new_tokens``), plus ``beta * KL`` in the loss with
the ``k3`` estimator by default.
"""
from __future__ import annotations

from rlhf_exp.core.advantages import group_normalized_advantages, group_view
from rlhf_exp.core.losses import clipped_policy_loss
from rlhf_exp.core.masked import Reduce
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats


class GRPO(OnlineObjective):
    """``objective=grpo``; options in ``conf/objective/grpo.yaml``."""

    name = "grpo"
    default_kl_in_reward = False
    default_kl_estimator = "k3"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.clip_low = float(cfg.get("clip_low", 0.2))
        ch = cfg.get("clip_high")
        self.clip_high = self.clip_low if ch is None else float(ch)
        self.scale_rewards = str(cfg.get("scale_rewards", "group"))
        if self.group_size < 2:
            raise ValueError("objective=grpo needs objective.group_size >= 2 (completions per prompt).")

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        R = self.sequence_rewards(batch, kl_coef)
        adv = group_normalized_advantages(R, self.group_size, self.scale_rewards, reduce=reduce)
        batch["advantages"] = adv.unsqueeze(1) * batch["response_mask"]
        g = group_view(R, self.group_size)
        std = g.std(dim=1, unbiased=True)
        return {"group_reward_std": std.mean(), "zero_std_group_frac": (std < 1e-6).float().mean()}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        loss, stats = clipped_policy_loss(out.logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"],
                                          self.clip_low, self.clip_high, self.loss_aggregation, self.max_new_tokens,
                                          self.clip_ratio_c)
        return loss, {**stats, "loss/policy": loss.detach()}
