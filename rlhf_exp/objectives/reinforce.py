"""REINFORCE (Williams, 1992) on the response log-probability, and its KL-regularised form.

``reinforce``: ``loss = -(R - b) * log pi(y|x)`` with ``R`` the sequence reward (minus ``beta * sum_t KL_t`` by
default: KL in the reward) and a baseline ``b``: ``none``, ``batch_mean``, ``moving_average`` or ``value`` (a learned
value of the prompt, trained with ``vf_coef * (V - R)^2``).

``kl_reinforce``: the same policy term with the KL in the *loss*: ``loss = -(R - b) * log pi(y|x) + beta * KL``. Its
default estimator is ``k2``: on-policy, the gradient of ``0.5 * (log pi - log pi_ref)^2`` is ``(log pi - log pi_ref)
* grad log pi``, whose expectation is exactly the gradient of ``KL(pi || pi_ref)``. (``k1`` in the loss has zero
expected gradient; ``k3`` in the loss follows the gradient of the reverse KL ``KL(pi_ref || pi)``.)
"""
from __future__ import annotations

import torch

from rlhf_exp.core.advantages import MovingAverageBaseline
from rlhf_exp.core.losses import LOG_RATIO_CLAMP, reinforce_loss, sequence_logprob
from rlhf_exp.core.masked import Reduce, masked_moments
from rlhf_exp.core.state import check_keys
from rlhf_exp.modeling import ResponseOutput
from rlhf_exp.objectives.base import Batch, OnlineObjective, Stats

BASELINES = ("none", "batch_mean", "moving_average", "value")


def sequence_importance_weights(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pi(y|x) / pi_old(y|x) = exp(sum_t (log pi - log pi_old))`` per sequence, the log clamped to [-20, 20],
    padding ignored. ``(B, T) -> (B,)``. Weighting ``-A * log pi(y|x)`` by it (detached) makes the REINFORCE gradient
    unbiased for samples drawn from ``pi_old`` (an unclipped, untruncated importance weight: high variance when the
    policies drift apart)."""
    diff = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))
    return torch.exp(sequence_logprob(diff, mask, "sum").clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


class Reinforce(OnlineObjective):
    """``objective=reinforce``; options in ``conf/objective/reinforce.yaml``."""

    name = "reinforce"
    default_kl_in_reward = True
    default_kl_estimator = "k1"

    def __init__(self, cfg, kl_cfg, max_new_tokens=None):
        super().__init__(cfg, kl_cfg, max_new_tokens)
        self.baseline = str(cfg.get("baseline", "batch_mean"))
        if self.baseline not in BASELINES:
            raise ValueError(f"objective.baseline={self.baseline!r}. Valid: {', '.join(BASELINES)}.")
        self.normalize = bool(cfg.get("normalize_advantages", False))
        self.vf_coef = float(cfg.get("vf_coef", 0.1))
        self.moving = MovingAverageBaseline(float(cfg.get("baseline_decay", 0.9)))
        # off-policy minibatches: weight each sequence's term by pi(y|x) / pi_old(y|x), detached
        self.importance_weighting = bool(cfg.get("importance_weighting", False))

    def state_dict(self) -> dict:
        return {"moving_average": self.moving.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, ("moving_average",), f"objective={self.name}")
        self.moving.load_state_dict(state["moving_average"])

    @property
    def needs_value(self) -> bool:  # type: ignore[override]
        return self.baseline == "value"

    @property
    def token_level_policy_loss(self) -> bool:  # type: ignore[override]
        return not self.importance_weighting   # its sequence weights multiply (B,) advantages

    def compute_advantages(self, batch: Batch, kl_coef: float, reduce: Reduce = None) -> Stats:
        R = self.sequence_rewards(batch, kl_coef)
        ones = torch.ones_like(R)
        _, mean, var = masked_moments(R, ones, reduce)
        if self.baseline == "none":
            b = torch.zeros_like(R)
        elif self.baseline == "batch_mean":
            b = mean.expand_as(R)
        elif self.baseline == "moving_average":
            b = torch.full_like(R, self.moving(float(mean)))
        else:
            b = batch["old_values"][:, 0]
        adv = R - b
        if self.normalize:
            _, amean, avar = masked_moments(adv, ones, reduce)
            adv = (adv - amean) / (avar.sqrt() + 1e-8)
        batch["advantages"] = adv
        batch["seq_returns"] = R
        return {"seq_reward_mean": mean, "baseline_mean": b.mean(), "advantages_std": adv.std() if adv.numel() > 1
                else torch.zeros(())}

    def policy_loss(self, out: ResponseOutput, mb: Batch) -> tuple:
        mask = mb["response_mask"]
        adv = mb["advantages"]
        stats: Stats = {}
        if self.importance_weighting:
            w = sequence_importance_weights(out.logprobs.detach(), mb["old_logprobs"], mask)
            adv = adv * w
            stats["ratio_mean"] = w.mean()
        pg = reinforce_loss(out.logprobs, adv, mask, self.loss_aggregation, self.max_new_tokens)
        stats["loss/policy"] = pg.detach()
        if self.baseline == "value":
            vf = 0.5 * (out.values[:, 0] - mb["seq_returns"]).pow(2).mean()
            stats["loss/value"] = vf.detach()
            return pg + self.vf_coef * vf, stats
        return pg, stats


class KLReinforce(Reinforce):
    """``objective=kl_reinforce``: REINFORCE with ``beta * KL`` in the loss (by default; ``kl.in_reward=true``
    moves it into the reward, which makes it plain ``reinforce``)."""

    name = "kl_reinforce"
    default_kl_in_reward = False
    default_kl_estimator = "k2"
