"""Losses of the offline objectives on preference data: the DPO family, KTO, and Bradley-Terry reward modelling.

Everything here works on per-*sequence* quantities (one number per completion), computed by the caller from the
models:

* ``chosen_logratios``, ``rejected_logratios``: ``(B,)``, ``log pi(y|x) - log pi_ref(y|x)`` of the chosen and the
  rejected completion of each pair, summed over the completion's tokens (or averaged per token, for IPO; see
  :func:`dpo_loss`).
* ``chosen_scores``, ``rejected_scores``: ``(B,)``, a reward model's scalar scores.

Conventions follow the papers and TRL (``trl==1.16``) where they agree; where they differ the docstring says so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_exp.core.masked import Reduce

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
# Loss types whose log-ratios are per-token means rather than sums (the caller asks sequence_logprob for "mean").
LENGTH_NORMALIZED_DPO_LOSSES = ("ipo",)


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair loss of the DPO family, from the log-ratios of the policy to the reference.

    With ``h = chosen_logratios - rejected_logratios`` (the difference of implicit rewards divided by ``beta``) and
    ``eps = label_smoothing``:

    * ``sigmoid`` (DPO, Rafailov et al. 2023; with ``eps > 0`` conservative DPO): ``-(1 - eps) log s(beta h) -
      eps log s(-beta h)``. ``h = 0`` gives ``log 2``.
    * ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2``; ``beta`` is the paper's tau. TRL (and the IPO authors)
      use per-token *mean* log-ratios here, so that the target ``1 / (2 beta)`` does not depend on length; the offline
      DPO objective passes means for ``ipo`` (see ``LENGTH_NORMALIZED_DPO_LOSSES``).
    * ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 - beta h)``.
    * ``robust`` (rDPO, Chowdhury et al. 2024), unbiased under labels flipped with probability ``eps`` (< 0.5):
      ``(-(1 - eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)``; ``eps = 0`` is DPO.

    Args:
        chosen_logratios, rejected_logratios: ``(B,)``.
    Returns:
        ``(B,)`` losses (take the mean for the batch loss).
    """
    h = chosen_logratios - rejected_logratios
    eps = float(label_smoothing)
    if loss_type == "sigmoid":
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"objective.label_smoothing={eps} must be in [0, 0.5) for loss_type=sigmoid.")
        return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1.0 - beta * h)
    if loss_type == "robust":
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"objective.label_smoothing={eps} must be in [0, 0.5) for loss_type=robust (it is the "
                             f"probability that a preference label is flipped).")
        return (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1.0 - 2.0 * eps)
    raise ValueError(f"Unknown objective.loss_type {loss_type!r}. Valid: {', '.join(DPO_LOSS_TYPES)}.")


def implicit_reward_stats(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
                          beta: float) -> dict[str, torch.Tensor]:
    """DPO's implicit rewards ``beta * logratio``: means of the chosen and rejected ones, their margin, and the
    share of pairs where the chosen one is higher (ties count half). ``(B,), (B,) -> scalars`` (detached)."""
    c, r = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    return {"rewards/chosen": c.mean(), "rewards/rejected": r.mean(), "rewards/margin": (c - r).mean(),
            "rewards/accuracy": pairwise_accuracy(c, r)}


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Bradley-Terry reward-model loss (InstructGPT): ``mean(-log s(r_c - r_r - m)) + c * mean((r_c + r_r)^2)``.

    ``P(chosen > rejected) = s(r_c - r_r)`` under Bradley-Terry. The optional ``margin`` ``m`` (Llama 2) asks for a
    gap of at least ``m`` on pairs annotated as clearly better. The centring term (Eisenstein et al. 2023,
    TRL's ``center_rewards_coefficient``) pulls the rewards towards mean 0, which the pairwise term leaves free.

    Args:
        chosen_scores, rejected_scores: ``(B,)``.
        margin: ``(B,)`` or None.
        center_coef: ``c`` (0.01 is the usual value; 0 = off).
    Returns:
        the scalar batch loss.
    """
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_scores + rejected_scores) ** 2).mean()
    return loss


def pairwise_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Share of pairs ranked correctly, ``chosen > rejected``; a tie counts half (so a constant scorer gets 0.5).
    ``(B,), (B,) -> ()``."""
    c, r = chosen_scores.detach().float(), rejected_scores.detach().float()
    return ((c > r).float() + 0.5 * (c == r).float()).mean()


def kto_reference_point(mismatched_logratios: torch.Tensor, reduce: Reduce = None) -> torch.Tensor:
    """KTO's reference point ``z0``: an estimate of ``KL(pi || pi_ref)`` from completions paired with *other*
    examples' prompts, ``max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))``, detached (no gradient flows through it,
    as in the paper and TRL).

    Args:
        mismatched_logratios: ``(B,)``.
        reduce: sums over processes (see ``rlhf_exp.core.masked``), so the mean is over the global batch.
    Returns:
        a scalar >= 0.
    """
    x = mismatched_logratios.detach().float()
    s = torch.stack([x.sum(), torch.tensor(float(x.numel()), device=x.device)])
    if reduce is not None:
        s = reduce(s)
    return (s[0] / s[1].clamp(min=1.0)).clamp(min=0.0)


def kto_loss(
    logratios: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example KTO loss (Ethayarajh et al. 2024, eq. 7) on unpaired examples.

    With ``r = logratios`` and ``z0 = reference_point``: a desirable example costs
    ``w_D (1 - s(beta (r - z0)))``, an undesirable one ``w_U (1 - s(beta (z0 - r)))``. At ``r = z0`` both are
    ``w / 2``. Choose the weights so that ``w_D n_D / (w_U n_U)`` is in [1, 4/3] when the classes are unbalanced.

    Args:
        logratios: ``(B,)`` ``log pi(y|x) - log pi_ref(y|x)`` summed over the completion.
        desirable: ``(B,)`` bool, True for a desirable (good) completion.
        reference_point: ``z0`` from :func:`kto_reference_point`.
    Returns:
        ``(B,)`` losses (TRL takes their mean over the batch).
    """
    d = desirable.bool()
    z0 = torch.as_tensor(reference_point, dtype=logratios.dtype, device=logratios.device)
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - z0)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratios)))
    return torch.where(d, good, bad)
