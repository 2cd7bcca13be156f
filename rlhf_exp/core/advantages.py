"""Reward shaping and advantage estimators.

Shapes: ``(B, T)`` over response tokens, right-padded; ``mask`` marks real response tokens (the EOS, when sampled,
is a real token; everything after it is padding).
"""
from __future__ import annotations

import torch

from rlhf_exp.core.masked import Reduce, masked_whiten
from rlhf_exp.core.state import check_keys


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row. ``(B, T) -> (B,)`` (0 for an all-zero row)."""
    lengths = mask.long().sum(dim=1)
    return (lengths - 1).clamp(min=0)


def place_on_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put one score per sequence on its last real response token.

    Args:
        scores: ``(B,)``.
        mask: ``(B, T)``.
    Returns:
        ``(B, T)``, zero except at each row's last real token (all zero for an empty row).
    """
    out = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    has_tokens = mask.long().sum(dim=1) > 0
    out[torch.arange(mask.shape[0], device=mask.device), last_token_index(mask)] = scores * has_tokens.to(scores.dtype)
    return out


def kl_shaped_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
    token_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token rewards with the KL penalty in the reward (Ziegler et al.; InstructGPT).

    ``r_t = -kl_coef * kl_t`` on every response token, plus the task reward: the sequence score on the last real
    token, or, when the reward model gives them, the per-token task rewards instead.

    Args:
        scores: ``(B,)`` sequence-level task scores.
        kl: ``(B, T)`` per-token KL estimate.
        mask: ``(B, T)``.
        kl_coef: the coefficient beta (0 when the KL is not in the reward).
        token_scores: optional ``(B, T)`` per-token task rewards; they replace ``scores``.
    Returns:
        ``(B, T)``, zero on padding.
    """
    m = mask.to(kl.dtype)
    task = place_on_last_token(scores.to(kl.dtype), mask) if token_scores is None else token_scores.to(kl.dtype) * m
    return -kl_coef * kl * m + task


def sequence_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                     token_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence-level reward with the summed KL penalty: ``R = score - kl_coef * sum_t kl_t``. ``(B,)``.

    With per-token task rewards, ``score`` is their sum over the response.
    """
    m = mask.to(kl.dtype)
    task = scores.to(kl.dtype) if token_scores is None else (token_scores.to(kl.dtype) * m).sum(dim=1)
    return task - kl_coef * (kl * m).sum(dim=1)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over the response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = sum_l (gamma * lam)^l delta_{t+l}``, with the value after
    the last real token taken as 0 (the episode ends there). Identity: with ``gamma = lam = 1``,
    ``A_t = sum_{k>=t} r_k - V_t`` (reward-to-go minus value).

    Args:
        rewards: ``(B, T)`` per-token rewards (zero on padding).
        values: ``(B, T)`` value estimates ``V(s_t)`` for the state before each response token.
        mask: ``(B, T)``.
        gamma, lam: discount and GAE lambda.
    Returns:
        ``(advantages, returns)``, both ``(B, T)``, zero on padding; ``returns = advantages + values``.
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        # Padding never feeds back into a real token: reset the running sum where the token is padding.
        last = last * m[:, t]
        advantages[:, t] = last
    returns = (advantages + values) * m
    return advantages * m, returns


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                      reduce: Reduce = None) -> torch.Tensor:
    """Advantage whitening over all real tokens of the (global) batch. ``(B, T) -> (B, T)``."""
    return masked_whiten(advantages, mask, shift_mean=shift_mean, reduce=reduce)


# ------------------------------------------------------------------------------------ sequence-level estimators
def group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B,) -> (B // G, G)``: consecutive rows are the ``G`` completions of one prompt."""
    if x.shape[0] % group_size:
        raise ValueError(f"batch of {x.shape[0]} is not a whole number of groups of {group_size}.")
    return x.view(-1, group_size)


def group_normalized_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                                eps: float = 1e-4, reduce: Reduce = None) -> torch.Tensor:
    """GRPO's advantages (Shao et al., 2024): each reward minus its group's mean, divided by a scale.

    Args:
        rewards: ``(B,)`` sequence rewards, ``B = n_groups * G`` with each group's rows consecutive.
        group_size: ``G``.
        scale: ``group`` (divide by the group's std, original GRPO), ``batch`` (by the std of the whole, global
            batch), ``none`` (no division, Dr. GRPO).
        eps: added to the std. A group whose rewards are all equal gets advantage 0, never NaN.
    Returns:
        ``(B,)``.
    """
    g = group_view(rewards, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale == "group":
        std = g.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        centred = centred / (std + eps)
    elif scale == "batch":
        from rlhf_exp.core.masked import masked_moments

        _, _, var = masked_moments(rewards, torch.ones_like(rewards), reduce)
        centred = centred / (var.sqrt() + eps)
    elif scale != "none":
        raise ValueError(f"Unknown scale_rewards {scale!r}. Valid: group, batch, none.")
    return centred.reshape(-1)


def leave_one_out_baseline(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's baseline (Kool et al., 2019; Ahmadian et al., 2024): the mean of the *other* ``G - 1`` rewards.

    ``b_i = (sum_j R_j - R_i) / (G - 1)``. ``(B,) -> (B,)``; needs ``G >= 2``.
    """
    if group_size < 2:
        raise ValueError("The leave-one-out baseline needs objective.group_size >= 2.")
    g = group_view(rewards, group_size)
    return ((g.sum(dim=1, keepdim=True) - g) / (group_size - 1)).reshape(-1)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go per token: ``G_t = sum_{k >= t} gamma^(k-t) r_k`` over real tokens. ``(B, T) -> (B, T)``."""
    m = mask.to(rewards.dtype)
    r = rewards * m
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * m


class MovingAverageBaseline:
    """An exponential moving average of the mean sequence reward: ``b <- decay * b + (1 - decay) * mean(R)``.

    The advantage of a batch uses the baseline *before* the batch is folded in (so it stays independent of the
    sample it is subtracted from).
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"objective.baseline_decay must be in [0, 1), got {decay}.")
        self.decay = decay
        self.value: float | None = None

    def __call__(self, batch_mean: float) -> float:
        b = batch_mean if self.value is None else self.value
        self.value = batch_mean if self.value is None else self.decay * self.value + (1 - self.decay) * batch_mean
        return b

    def state_dict(self) -> dict:
        """The average so far (None before the first batch); the decay comes from the config."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, ("value",), "the moving-average baseline")
        self.value = None if state["value"] is None else float(state["value"])


def preprocess_scores(
    scores: torch.Tensor, scale: float = 1.0, clip: float | None = None, mean: float = 0.0, std: float = 1.0,
    token_scores: torch.Tensor | None = None, mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loop's reward preprocessing (the ``reward:`` config block): normalise, scale, clip.

    ``x' = clip((x - mean) / std * scale, -clip, clip)``; ``mean = 0, std = 1`` when normalisation is off (the loop
    passes its running moments otherwise). Per-token task rewards get the same affine map on their sequence total:
    each token is multiplied by ``scale / std`` and ``-mean * scale / std`` is added on the last real token, so
    ``sum_t x'_t = (sum_t x_t - mean) / std * scale``; then each token reward is clipped.

    Args:
        scores: ``(B,)`` sequence scores.
        token_scores: optional ``(B, T)`` per-token task rewards; mask: ``(B, T)`` (needed with them).
    Returns:
        ``(scores', token_scores' or None)``.
    """
    a = float(scale) / float(std)
    x = (scores.float() - mean) * a
    ts = None
    if token_scores is not None:
        if mask is None:
            raise ValueError("preprocess_scores: per-token scores need the response mask.")
        m = mask.to(torch.float32)
        ts = token_scores.float() * a * m - place_on_last_token(torch.full_like(x, mean * a), mask) * m
    if clip is not None:
        x = x.clamp(-float(clip), float(clip))
        if ts is not None:
            ts = ts.clamp(-float(clip), float(clip)) * m
    return x, ts
