"""The gap between a separate sampler (``generation.backend=vllm``) and the trained policy, and its correction.

The trainer scores every sampled response with the policy (``old_logprobs``); a separate engine samples with its
own copy of the weights and kernels, so its log-probs of the same tokens (``sampler_logprobs``) differ a little
(precision, kernels, batch shapes), and the samples are slightly off-policy. Truncated importance sampling (TIS;
Yao et al., "Your efficient RL framework secretly brings you off-policy RL training", 2025; verl's
``tis_imp_ratio_cap``, OpenRLHF's ``vllm_is_truncated_threshold``, TRL's ``vllm_importance_sampling_correction``
with ``token_truncate``) multiplies each token's policy-gradient term by ``min(pi_old / pi_sampler, C)``, a constant
(no gradient), so the update estimates the gradient for samples from the trained policy.
"""
from __future__ import annotations

import math

import torch


def logprob_gap(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``|log pi_old - log pi_sampler|``, 0 at padding. ``(B, T), (B, T), (B, T) -> (B, T)``."""
    return torch.where(mask.bool(), (old_logprobs.float() - sampler_logprobs.float()).abs(),
                       torch.zeros_like(old_logprobs, dtype=torch.float))


def truncated_importance_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """TIS weights ``min(exp(log pi_old - log pi_sampler), cap)`` per token, 1 at padding, detached.

    ``(B, T), (B, T), (B, T) -> (B, T)``. ``cap >= 1`` (verl and OpenRLHF use 2).
    """
    if not cap >= 1.0:
        raise ValueError(f"generation.vllm.importance_cap={cap} must be >= 1.")
    d = torch.where(mask.bool(), old_logprobs.float() - sampler_logprobs.float(),
                    torch.zeros_like(old_logprobs, dtype=torch.float))
    return torch.exp(d.clamp(max=math.log(cap))).detach()
