"""The math layer: pure functions over tensors, no I/O and no models. Shapes are in each docstring."""
from rlhf_exp.core.advantages import (
    MovingAverageBaseline, discounted_returns, gae, group_normalized_advantages, kl_shaped_token_rewards,
    last_token_index, leave_one_out_baseline, place_on_last_token, sequence_rewards, whiten_advantages,
)
from rlhf_exp.core.kl import (
    KL_ESTIMATORS, AdaptiveKLController, FixedKLController, KLController, NoKLController, full_kl_from_logits,
    kl_abs, kl_k1, kl_k2, kl_k3, make_kl_controller, per_token_kl,
)
from rlhf_exp.core.losses import (
    LOSS_AGGREGATIONS, aggregate_loss, clipped_policy_loss, clipped_sequence_loss, clipped_value_loss,
    entropy_from_logits, logprobs_from_logits, next_token_loss, reinforce_loss, sequence_logprob,
)
from rlhf_exp.core.masked import masked_mean, masked_moments, masked_sum, masked_var, masked_whiten
from rlhf_exp.core.preference import (
    DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss, implicit_reward_stats, kto_loss, kto_reference_point,
    pairwise_accuracy,
)

__all__ = [
    "MovingAverageBaseline", "discounted_returns", "gae", "group_normalized_advantages", "kl_shaped_token_rewards",
    "last_token_index", "leave_one_out_baseline", "place_on_last_token", "sequence_rewards", "whiten_advantages",
    "KL_ESTIMATORS", "AdaptiveKLController", "FixedKLController", "KLController", "NoKLController",
    "full_kl_from_logits", "kl_abs", "kl_k1", "kl_k2", "kl_k3", "make_kl_controller", "per_token_kl",
    "LOSS_AGGREGATIONS", "aggregate_loss", "clipped_policy_loss", "clipped_sequence_loss", "clipped_value_loss",
    "entropy_from_logits", "logprobs_from_logits", "next_token_loss", "reinforce_loss", "sequence_logprob", "masked_mean", "masked_moments", "masked_sum", "masked_var", "masked_whiten",
    "DPO_LOSS_TYPES", "bradley_terry_loss", "dpo_loss", "implicit_reward_stats", "kto_loss", "kto_reference_point",
    "pairwise_accuracy",
]
