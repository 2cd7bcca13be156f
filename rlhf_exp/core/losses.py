"""Token log-probabilities, entropy, the policy/value losses, and the policy-loss registry (:data:`POLICY_LOSSES`).

Shapes: ``(B, T)`` response tokens, ``(B, T, V)`` logits over the vocabulary, ``mask`` marks real response tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from rlhf_exp.core.masked import masked_mean
from rlhf_exp.core.registry import Param, Registry

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


# Logits over a real vocabulary are large: Qwen2.5's 151,936 tokens x 512 positions x 64 rows are 20 GB in fp32.
# The functions below never upcast the whole ``(B, T, V)`` tensor: they work on blocks of at most
# ``CHUNK_ELEMENTS`` logits (128 MiB in fp32), upcasting one block at a time.
CHUNK_ELEMENTS = 2 ** 25


def logit_blocks(B: int, T: int, V: int, chunk_rows: int | None = None):
    """Yield ``(batch_slice, time_slice)`` blocks that tile a ``(B, T)`` grid of positions, each with at most
    ``chunk_rows`` positions (default: ``CHUNK_ELEMENTS // V``). Whole rows when they fit, else pieces of one row."""
    rows = int(chunk_rows or max(1, CHUNK_ELEMENTS // max(V, 1)))
    if rows >= T:
        nb = max(1, rows // max(T, 1))
        for b in range(0, B, nb):
            yield slice(b, b + nb), slice(None)
    else:
        for b in range(B):
            for t in range(0, T, rows):
                yield slice(b, b + 1), slice(t, t + rows)


def _selective_block(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logit[label] - logsumexp(logits)`` of one block, in fp32. ``(b, t, V), (b, t) -> (b, t)``."""
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1).float()
    return picked - torch.logsumexp(logits.float(), dim=-1)


class _SelectiveLogSoftmax(torch.autograd.Function):
    """``log softmax(logits)[labels]`` block by block; the backward ``grad * (onehot - softmax)`` too, written straight
    into a gradient of the logits' own dtype (no fp32 copy of the whole logits is kept for backward)."""

    @staticmethod
    def forward(ctx, logits, labels, chunk_rows):
        B, T, V = logits.shape
        out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
        for bs, ts in logit_blocks(B, T, V, chunk_rows):
            out[bs, ts] = _selective_block(logits[bs, ts], labels[bs, ts])
        ctx.save_for_backward(logits, labels)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels = ctx.saved_tensors
        B, T, V = logits.shape
        grad = torch.empty_like(logits)
        for bs, ts in logit_blocks(B, T, V, ctx.chunk_rows):
            g = grad_out[bs, ts].float().unsqueeze(-1)
            block = torch.softmax(logits[bs, ts].float(), dim=-1).mul_(-g)
            block.scatter_add_(-1, labels[bs, ts].unsqueeze(-1), g)
            grad[bs, ts] = block.to(grad.dtype)
        return grad, None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``: a selective log-softmax, the label's logit minus the
    ``logsumexp`` over the vocabulary, computed in blocks of ``chunk_rows`` positions (see :func:`logit_blocks`).

    Args:
        logits: ``(B, T, V)`` in any float dtype (divide by the sampling temperature *before* calling).
        labels: ``(B, T)`` token ids.
    Returns:
        ``(B, T)`` in float32, equal to ``log_softmax(logits.float()).gather(labels)``; differentiable, with a
        gradient in ``logits.dtype``.
    """
    if logits.requires_grad and torch.is_grad_enabled():
        return _SelectiveLogSoftmax.apply(logits, labels, chunk_rows)
    B, T, V = logits.shape
    out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
    for bs, ts in logit_blocks(B, T, V, chunk_rows):
        out[bs, ts] = _selective_block(logits[bs, ts], labels[bs, ts])
    return out


def _entropy_block(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    p = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` at each position: ``logsumexp(l) - sum_v p_v l_v``. ``(B, T, V) -> (B, T)``
    float32, computed in blocks of ``chunk_rows`` positions (differentiable: the entropy bonus)."""
    B, T, V = logits.shape
    out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
    for bs, ts in logit_blocks(B, T, V, chunk_rows):
        out[bs, ts] = _entropy_block(logits[bs, ts])
    return out


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                   normalizer: float | None = None) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar.

    * ``token-mean``: mean over all real tokens in the batch (long responses weigh more; PPO/DAPO default).
    * ``seq-mean-token-mean``: mean over tokens of each sequence, then over sequences (original GRPO).
    * ``seq-mean-token-sum``: sum over tokens of each sequence, then mean over sequences (sequence log-prob).
    * ``seq-mean-token-sum-norm``: sum over all tokens divided by ``B * normalizer`` with a constant
      ``normalizer`` (the maximum response length) instead of each sequence's length (Dr. GRPO).
    """
    m = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, m)
    if mode == "seq-mean-token-mean":
        return masked_mean(loss_mat, m, dim=1).mean()
    if mode == "seq-mean-token-sum":
        return (loss_mat * m).sum(dim=1).mean()
    if mode == "seq-mean-token-sum-norm":
        norm = float(normalizer if normalizer is not None else loss_mat.shape[1])
        return (loss_mat * m).sum() / (loss_mat.shape[0] * norm)
    raise ValueError(f"Unknown loss aggregation {mode!r}. Valid: {', '.join(LOSS_AGGREGATIONS)}.")


LOG_RATIO_CLAMP = 20.0  # |log pi - log pi_old| is clamped to this before exp (verl's core_algos does the same)


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``pi / pi_old = exp(clamp(log pi - log pi_old, -20, 20))``, 1 at padded positions (whatever they
    hold). ``(B, T) -> (B, T)``, differentiable in ``logprobs``."""
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate at token level (Schulman et al., 2017), with optional asymmetric and dual clipping.

    ``ratio = exp(clamp(logprobs - old_logprobs, -20, 20))`` (padded positions get log-ratio 0, so an inf or NaN
    log-prob there cannot reach the loss); per token ``L = max(-A * ratio, -A * clip(ratio, 1 - clip_low,
    1 + clip_high))``. Dual-clip PPO (Ye et al., 2020; ``clip_ratio_c``, following verl's
    ``core_algos.compute_policy_loss_vanilla``): where ``A < 0`` the loss is further capped at ``-A * clip_ratio_c``,
    i.e. ``L = min(L, -A * clip_ratio_c)``, so a token whose ratio has grown far above 1 under a negative advantage
    cannot dominate the update (its gradient is 0 there). Then aggregated with :func:`aggregate_loss`.

    Args:
        logprobs: ``(B, T)`` under the policy being optimised (carries the gradient).
        old_logprobs: ``(B, T)`` under the policy that sampled (detached).
        advantages: ``(B, T)``.
        mask: ``(B, T)``.
        clip_low, clip_high: the clip range ``[1 - clip_low, 1 + clip_high]``; ``clip_high`` defaults to ``clip_low``.
        clip_ratio_c: the dual-clip bound (> 1, verl's default 3.0); ``None`` = off.
    Returns:
        ``(loss, stats)`` with stats ``ratio_mean``, ``clipfrac`` (share of tokens where the clipped branch was
        taken), ``approx_kl`` (``0.5 * mean(log_ratio**2)`` between the new and the sampling policy) and, with dual
        clipping, ``clipfrac_lower`` (share of tokens capped by ``clip_ratio_c``), detached.
    """
    clip_high = clip_low if clip_high is None else clip_high
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"objective.clip_ratio_c={clip_ratio_c} must be > 1 (dual-clip PPO's bound on the ratio "
                         f"for negative advantages; verl uses 3.0), or null to turn dual clipping off.")
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(unclipped, clipped)
    lower = None
    if clip_ratio_c is not None:
        cap = -advantages * clip_ratio_c
        lower = (advantages < 0) & (loss_mat > cap)
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_mat, cap), loss_mat)
    loss = aggregate_loss(loss_mat, mask, aggregation, normalizer)
    with torch.no_grad():
        stats = {
            "ratio_mean": masked_mean(ratio, mask),
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio.pow(2), mask),
        }
        if lower is not None:
            stats["clipfrac_lower"] = masked_mean(lower.float(), mask)
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss: ``0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``, token mean.

    Args:
        values: ``(B, T)`` new value predictions (carry the gradient).
        old_values: ``(B, T)`` predictions at rollout time.
        returns: ``(B, T)`` targets.
        mask: ``(B, T)``.
        clip: ``c``; ``None`` gives the plain squared error.
    Returns:
        ``(loss, stats)`` with ``value_clipfrac``.
    """
    err = (values - returns).pow(2)
    if clip is None:
        loss = 0.5 * masked_mean(err, mask)
        return loss, {"value_clipfrac": torch.zeros((), device=values.device)}
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clipped = (v_clipped - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"value_clipfrac": masked_mean((err_clipped > err).float(), mask)}
    return loss, stats


def sequence_logprob(logprobs: torch.Tensor, mask: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Log-probability of each response: the sum over its tokens (``sum``) or the per-token mean (``mean``).

    ``(B, T) -> (B,)``.
    """
    m = mask.to(logprobs.dtype)
    total = (logprobs * m).sum(dim=1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / m.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"Unknown sequence log-prob reduction {reduction!r}. Valid: sum, mean.")


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   aggregation: str = "seq-mean-token-sum", normalizer: float | None = None) -> torch.Tensor:
    """REINFORCE: ``-A * log pi``, aggregated over tokens and sequences.

    Args:
        logprobs: ``(B, T)`` under the current policy (carries the gradient).
        advantages: ``(B,)`` one per sequence (broadcast to its tokens) or ``(B, T)`` per token.
        mask: ``(B, T)``.
        aggregation: see :func:`aggregate_loss`; ``seq-mean-token-sum`` is ``-mean_i(A_i * log pi(y_i|x_i))``.
    """
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    return aggregate_loss(-adv * logprobs, mask, aggregation, normalizer)


def clipped_sequence_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    ratio_reduction: str = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate on the *sequence* ratio ``pi(y|x) / pi_old(y|x)``.

    ``log r = sum_t (log pi - log pi_old)`` (``ratio_reduction=sum``), or its per-token mean (``mean``, the
    length-normalised ratio of GSPO). Per sequence ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``, mean over
    sequences.

    Args:
        logprobs, old_logprobs: ``(B, T)``.
        advantages: ``(B,)``.
        mask: ``(B, T)``.
    Returns:
        ``(loss, stats)`` with the sequence-level ``ratio_mean`` and ``clipfrac``.
    """
    clip_high = clip_low if clip_high is None else clip_high
    log_ratio = sequence_logprob(torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs)), mask,
                                 ratio_reduction)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {"ratio_mean": ratio.mean(), "clipfrac": (clipped > unclipped).float().mean(),
                 "approx_kl": (0.5 * log_ratio.pow(2)).mean()}
    return loss, stats


def sequence_importance_weights(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pi(y|x) / pi_old(y|x) = exp(sum_t (log pi - log pi_old))`` per sequence, the log clamped to [-20, 20],
    padding ignored. ``(B, T) -> (B,)``. Weighting ``-A * log pi(y|x)`` by it (detached) makes the REINFORCE gradient
    unbiased for samples drawn from ``pi_old`` (an unclipped, untruncated importance weight: high variance when the
    policies drift apart)."""
    diff = torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))
    return torch.exp(sequence_logprob(diff, mask, "sum").clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


# ============================================================================================================
# The policy-loss registry
# ============================================================================================================
# A policy loss is a pure function
#
#     fn(logprobs, old_logprobs, advantages, mask, p, aggregation, normalizer) -> (loss, stats)
#
# of the current policy's log-probs ``(B, T)`` (carrying the gradient), the sampling policy's ``(B, T)``, the
# advantages (``(B,)`` or ``(B, T)``, see ``advantages`` below), the response mask, its parameters ``p`` (read from
# the objective block by the names it declares), and the objective's ``loss_aggregation`` with its constant
# normaliser (:func:`aggregate_loss`: one aggregation for every token-level term of an objective). ``stats`` are
# logged as ``train/<name>`` (detached).


@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss (see above) and its declarations.

    ``advantages``: what it takes: ``token`` (``(B, T)``; a sequence-level estimator's advantages are broadcast to
    the tokens), ``sequence`` (``(B,)``; a token-level estimator cannot feed it) or ``any``. ``token_level(p,
    token_advantages)``: whether the policy term is a sum of per-token terms ``-A_t * f(ratio_t)``, so that a per-token
    importance weight may scale it by scaling the advantages (``generation.vllm.importance_correction``)."""

    name: str
    fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    params: tuple[Param, ...]
    doc: str
    advantages: str
    token_level: Callable[[SimpleNamespace, bool], bool]


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss", PolicyLoss)
register_policy_loss = POLICY_LOSSES.register

CLIP_LOW = Param("cliprange", float, "the ratio's clip range [1 - cliprange, 1 + cliprange_high]", "> 0",
                 lambda v: v > 0, aliases=("clip_low",))
CLIP_HIGH = Param("cliprange_high", float, "the upper clip (asymmetric clipping, DAPO's clip-higher); null = "
                  "cliprange", "> 0", lambda v: v > 0, nullable=True, aliases=("clip_high",))


@register_policy_loss(
    "clipped_token", advantages="token", token_level=lambda p, token_advantages: True,
    params=(CLIP_LOW, CLIP_HIGH,
            Param("clip_ratio_c", float, "dual-clip PPO: cap -A * ratio at -A * clip_ratio_c for A < 0 (verl: 3.0); "
                  "null = off", "> 1", lambda v: v > 1.0, nullable=True)))
def clipped_token_policy_loss(logprobs, old_logprobs, advantages, mask, p: SimpleNamespace, aggregation: str,
                              normalizer: float | None):
    """PPO's clipped surrogate on each token's ratio (:func:`clipped_policy_loss`), aggregated by
    ``loss_aggregation``."""
    return clipped_policy_loss(logprobs, old_logprobs, advantages, mask, p.cliprange, p.cliprange_high, aggregation,
                               normalizer, p.clip_ratio_c)


@register_policy_loss(
    "clipped_sequence", advantages="sequence", token_level=lambda p, token_advantages: False,
    params=(CLIP_LOW, CLIP_HIGH,
            Param("ratio", str, "the sequence ratio: sum (pi(y|x)/pi_old(y|x)) | mean (per-token mean log-ratio, "
                  "GSPO)", choices=("sum", "mean"))))
def clipped_sequence_policy_loss(logprobs, old_logprobs, advantages, mask, p: SimpleNamespace, aggregation: str,
                                 normalizer: float | None):
    """PPO's clipped surrogate on the sequence ratio (:func:`clipped_sequence_loss`), mean over sequences."""
    return clipped_sequence_loss(logprobs, old_logprobs, advantages, mask, p.cliprange, p.cliprange_high, p.ratio)


@register_policy_loss(
    "reinforce", advantages="any",
    token_level=lambda p, token_advantages: token_advantages or not p.importance_weighting,
    params=(Param("importance_weighting", bool, "weight each sequence's terms by pi(y|x)/pi_old(y|x), detached (for "
                  "minibatches after the first of a rollout batch)"),))
def reinforce_policy_loss(logprobs, old_logprobs, advantages, mask, p: SimpleNamespace, aggregation: str,
                          normalizer: float | None):
    """REINFORCE: ``-A * log pi`` (:func:`reinforce_loss`), optionally importance-weighted per sequence
    (:func:`sequence_importance_weights`)."""
    stats: dict[str, torch.Tensor] = {}
    if p.importance_weighting:
        w = sequence_importance_weights(logprobs.detach(), old_logprobs, mask)
        advantages = advantages * (w if advantages.dim() == 1 else w.unsqueeze(1))
        stats["ratio_mean"] = w.mean()
    return reinforce_loss(logprobs, advantages, mask, aggregation, normalizer), stats


IGNORE_INDEX = -100  # label value that takes no loss (prompt and padding positions)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Supervised next-token cross-entropy where ``labels`` allow it (SFT with the prompt masked).

    One implementation for the SFT objective and for ``python -m rlhf_exp.task.build``.

    Args:
        logits: ``(B, L - 1, V)``: a causal LM's logits at positions ``0 .. L-2`` of the sequence (they predict
            tokens ``1 .. L-1``), i.e. ``lm(input_ids).logits[:, :-1]``.
        labels: ``(B, L)``: the sequence's token ids with ``IGNORE_INDEX`` (-100) at positions that take no loss
            (prompt tokens and padding). The first position is never predicted.
        reduction: ``mean`` (over the tokens that take a loss) | ``sum``.
    Returns:
        a scalar.
    """
    target = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction=reduction)
