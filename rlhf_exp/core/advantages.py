"""Reward shaping, advantage estimators, and the advantage-estimator registry (:data:`ADV_ESTIMATORS`).

Shapes: ``(B, T)`` over response tokens, right-padded; ``mask`` marks real response tokens (the EOS, when sampled,
is a real token; everything after it is padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Optional

import torch

from rlhf_exp.core.losses import clipped_value_loss
from rlhf_exp.core.masked import Reduce, masked_mean, masked_moments, masked_whiten
from rlhf_exp.core.registry import Param, Registry
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


def remax_advantages(token_rewards: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ReMax's advantages (Li et al., 2023; verl's ``compute_remax_outcome_advantage``): ``A_t = sum_{k >= t} r_k - b``
    on real tokens, 0 on padding, with ``b`` the reward of the greedy response. ``(B, T), (B,), (B, T) -> (B, T)``."""
    m = mask.to(token_rewards.dtype)
    return (discounted_returns(token_rewards, mask, 1.0) - baseline.to(token_rewards.dtype).unsqueeze(1)) * m


# ============================================================================================================
# The advantage-estimator registry
# ============================================================================================================
# An estimator is a pure function
#
#     fn(batch, kl_coef, group_size, p, reduce, state) -> (outputs, stats)
#
# of a scored rollout batch (``dict[str, Tensor]``: ``scores (B,)``, ``kl (B, T)``, ``response_mask (B, T)``, and
# ``token_scores``, ``old_values``, ``baseline_scores`` where present; see rlhf_exp.objectives.base), the KL
# coefficient *inside the reward* (0 when the KL is in the loss), the group size ``G`` (the ``G`` completions of a
# prompt are consecutive rows), its parameters ``p`` (read from the objective block by the names it declares),
# ``reduce`` (a sum over processes, for global statistics) and its ``state`` (None, or what ``make_state`` built).
# ``outputs`` holds ``advantages`` ((B,) for a sequence-level estimator, (B, T) for a token-level one) and any
# targets its value loss needs; ``stats`` are logged as ``train/<name>``.
Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator (see above) and its declarations.

    ``level``: ``sequence`` (advantages ``(B,)``) or ``token`` (``(B, T)``). ``min_group_size``/``max_group_size``:
    the group sizes it accepts. ``requires``: batch keys beyond the scored rollout's that a rollout hook must add
    (``baseline_scores``). ``needs_value``: whether it reads ``old_values`` (a value head is trained) for parameters
    ``p``; ``value_loss(values, mb, p) -> (loss, stats)`` is then the critic's loss, weighted by ``p.vf_coef``.
    ``make_state(p)``: the state it keeps across steps (checkpointed). ``check(p, group_size)``: a problem with a
    combination of settings, or None."""

    name: str
    fn: Callable[..., tuple[dict[str, torch.Tensor], dict[str, Any]]]
    params: tuple[Param, ...]
    doc: str
    level: str
    min_group_size: int = 1
    max_group_size: Optional[int] = None
    requires: tuple[str, ...] = ()
    needs_value: Callable[[SimpleNamespace], bool] = lambda p: False
    value_loss: Optional[Callable[..., tuple[torch.Tensor, dict[str, Any]]]] = None
    make_state: Optional[Callable[[SimpleNamespace], Any]] = None
    check: Optional[Callable[[SimpleNamespace, int], Optional[str]]] = None


ADV_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator", AdvantageEstimator)
register_adv_est = ADV_ESTIMATORS.register

_unit = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
GAMMA = Param("gamma", float, "discount of the reward-to-go", _unit[1], _unit[0])
VF_COEF = Param("vf_coef", float, "weight of the value loss", ">= 0", lambda v: v >= 0)


def token_value_loss(values: torch.Tensor, mb: Batch, p: SimpleNamespace) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO's clipped value loss towards the per-token ``returns`` (:func:`~rlhf_exp.core.losses.clipped_value_loss`,
    clipped around ``old_values`` by ``p.cliprange_value``)."""
    return clipped_value_loss(values, mb["old_values"], mb["returns"], mb["response_mask"], p.cliprange_value)


def sequence_value_loss(values: torch.Tensor, mb: Batch, p: SimpleNamespace) -> tuple[torch.Tensor, dict[str, Any]]:
    """``0.5 * mean_i (V(x_i) - R_i)^2``: the value of the prompt (the value head at the first response position)
    towards the sequence return ``seq_returns``."""
    return 0.5 * (values[:, 0] - mb["seq_returns"]).pow(2).mean(), {}


@register_adv_est(
    "gae", level="token", needs_value=lambda p: True, value_loss=token_value_loss,
    params=(GAMMA, Param("lam", float, "GAE lambda", *reversed(_unit)),
            Param("whiten_advantages", bool, "whiten the advantages over the real tokens of the global batch"),
            VF_COEF,
            Param("cliprange_value", float, "clip of the new value around its rollout value; null = unclipped", "> 0",
                  lambda v: v > 0, nullable=True)))
def gae_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace, reduce: Reduce = None,
                   state: Any = None):
    """Full PPO's: per-token rewards (task score on the last token, ``-beta * KL_t`` on every token), a value head's
    ``V(s_t)``, GAE(gamma, lam), optionally whitened; the critic learns the returns."""
    mask = batch["response_mask"]
    rewards = kl_shaped_token_rewards(batch["scores"], batch["kl"], mask, kl_coef, batch.get("token_scores"))
    advantages, returns = gae(rewards, batch["old_values"], mask, p.gamma, p.lam)
    stats = {"advantages_mean_raw": masked_mean(advantages, mask), "returns_mean": masked_mean(returns, mask),
             "values_mean": masked_mean(batch["old_values"], mask)}
    if p.whiten_advantages:
        advantages = whiten_advantages(advantages, mask, reduce=reduce)
    return {"advantages": advantages, "returns": returns}, stats


BASELINES = ("none", "batch_mean", "moving_average", "value")


@register_adv_est(
    "sequence_baseline", level="sequence", needs_value=lambda p: p.baseline == "value",
    value_loss=sequence_value_loss, make_state=lambda p: MovingAverageBaseline(p.baseline_decay),
    params=(Param("baseline", str, "b: none | batch_mean (global) | moving_average (of past batch means) | value "
                  "(a learned value of the prompt)", choices=BASELINES),
            Param("baseline_decay", float, "decay of the moving_average baseline", "in [0, 1)",
                  lambda v: 0.0 <= v < 1.0),
            Param("normalize_advantages", bool, "whiten the sequence advantages over the global batch"),
            VF_COEF))
def sequence_baseline_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                                 reduce: Reduce = None, state: Optional[MovingAverageBaseline] = None):
    """REINFORCE's: the sequence reward ``R`` (minus ``beta * sum_t KL_t`` when the KL is in the reward) minus a
    baseline ``b``, one advantage per sequence."""
    R = sequence_rewards(batch["scores"], batch["kl"], batch["response_mask"], kl_coef, batch.get("token_scores"))
    ones = torch.ones_like(R)
    _, mean, var = masked_moments(R, ones, reduce)
    if p.baseline == "none":
        b = torch.zeros_like(R)
    elif p.baseline == "batch_mean":
        b = mean.expand_as(R)
    elif p.baseline == "moving_average":
        b = torch.full_like(R, state(float(mean)))
    else:
        b = batch["old_values"][:, 0]
    adv = R - b
    if p.normalize_advantages:
        _, amean, avar = masked_moments(adv, ones, reduce)
        adv = (adv - amean) / (avar.sqrt() + 1e-8)
    stats = {"seq_reward_mean": mean, "baseline_mean": b.mean(),
             "advantages_std": adv.std() if adv.numel() > 1 else torch.zeros(())}
    return {"advantages": adv, "seq_returns": R}, stats


@register_adv_est(
    "mean_baseline", level="sequence",
    params=(Param("whiten_advantages", bool, "divide the advantages by their standard deviation over the global "
                  "batch"),))
def mean_baseline_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                             reduce: Reduce = None, state: Any = None):
    """The sequence reward minus its group's mean (``group_size > 1``) or the global batch mean, one advantage per
    sequence (``ppo_seq``, GSPO)."""
    R = sequence_rewards(batch["scores"], batch["kl"], batch["response_mask"], kl_coef, batch.get("token_scores"))
    ones = torch.ones_like(R)
    if group_size > 1:
        g = group_view(R, group_size)
        adv = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    else:
        adv = R - masked_moments(R, ones, reduce)[1]
    if p.whiten_advantages:
        _, _, var = masked_moments(adv, ones, reduce)
        adv = adv / (var.sqrt() + 1e-8)
    return {"advantages": adv}, {"seq_reward_mean": R.mean()}


@register_adv_est(
    "token_mean_baseline", level="token",
    params=(GAMMA, Param("whiten_advantages", bool, "divide the advantages by the standard deviation of the returns "
                         "over the global batch's real tokens")))
def token_mean_baseline_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                                   reduce: Reduce = None, state: Any = None):
    """Token-level REINFORCE's: each token's discounted reward-to-go (per-token task rewards where the reward gives
    them) minus the mean return over the global batch's real tokens."""
    mask = batch["response_mask"]
    rewards = kl_shaped_token_rewards(batch["scores"], batch["kl"], mask, kl_coef, batch.get("token_scores"))
    returns = discounted_returns(rewards, mask, p.gamma)
    _, mean, var = masked_moments(returns, mask, reduce)
    adv = (returns - mean) * mask
    if p.whiten_advantages:
        adv = adv / (var.sqrt() + 1e-8)
    return {"advantages": adv}, {"token_reward_mean": masked_mean(rewards, mask), "returns_mean": mean}


@register_adv_est(
    "group_normalized", level="sequence", min_group_size=2,
    params=(Param("scale_rewards", str, "divide by the group's std (group, GRPO), the global batch's (batch) or "
                  "nothing (none, Dr. GRPO)", choices=("group", "batch", "none")),))
def group_normalized_estimator(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                               reduce: Reduce = None, state: Any = None):
    """GRPO's (Shao et al., 2024): each sequence reward minus its group's mean, scaled
    (:func:`group_normalized_advantages`)."""
    R = sequence_rewards(batch["scores"], batch["kl"], batch["response_mask"], kl_coef, batch.get("token_scores"))
    adv = group_normalized_advantages(R, group_size, p.scale_rewards, reduce=reduce)
    std = group_view(R, group_size).std(dim=1, unbiased=True)
    return {"advantages": adv}, {"group_reward_std": std.mean(), "zero_std_group_frac": (std < 1e-6).float().mean()}


@register_adv_est(
    "leave_one_out", level="sequence", min_group_size=2,
    params=(Param("normalize_advantages", bool, "whiten the sequence advantages over the global batch"),))
def leave_one_out_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                             reduce: Reduce = None, state: Any = None):
    """RLOO's (Kool et al., 2019; Ahmadian et al., 2024): each sequence reward minus the mean reward of the other
    ``G - 1`` completions of its prompt (:func:`leave_one_out_baseline`)."""
    R = sequence_rewards(batch["scores"], batch["kl"], batch["response_mask"], kl_coef, batch.get("token_scores"))
    adv = R - leave_one_out_baseline(R, group_size)
    if p.normalize_advantages:
        _, mean, var = masked_moments(adv, torch.ones_like(adv), reduce)
        adv = (adv - mean) / (var.sqrt() + 1e-8)
    return {"advantages": adv}, {"seq_reward_mean": R.mean()}


def _group_baseline_problem(p: SimpleNamespace, group_size: int) -> Optional[str]:
    if p.group_baseline and group_size < 2:
        return f"objective.group_baseline=true needs objective.group_size >= 2, got {group_size}"
    return None


@register_adv_est(
    "whitened_returns", level="token", check=_group_baseline_problem,
    params=(GAMMA, Param("group_baseline", bool, "first subtract each prompt group's mean task reward "
                         "(REINFORCE++-baseline; needs group_size >= 2)")))
def whitened_returns_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                                reduce: Reduce = None, state: Any = None):
    """REINFORCE++'s (Hu, 2025): per-token rewards (``-beta * KL_t`` with the task score on the last token), their
    reward-to-go, whitened over the global batch's real tokens."""
    mask = batch["response_mask"]
    scores, token_scores = batch["scores"], batch.get("token_scores")
    if p.group_baseline:
        # The baseline is the group mean of each response's total task reward; with per-token rewards it is
        # subtracted on the last token, where a sequence score would sit.
        totals = scores if token_scores is None else (token_scores * mask).sum(dim=1)
        base = group_view(totals, group_size).mean(dim=1, keepdim=True)
        base = base.expand(-1, group_size).reshape(-1)
        if token_scores is None:
            scores = scores - base
        else:
            token_scores = token_scores - place_on_last_token(base, mask)
    rewards = kl_shaped_token_rewards(scores, batch["kl"], mask, kl_coef, token_scores)
    returns = discounted_returns(rewards, mask, p.gamma)
    return {"advantages": whiten_advantages(returns, mask, reduce=reduce)}, {"returns_mean": masked_mean(returns, mask)}


@register_adv_est("greedy_baseline", level="token", max_group_size=1, requires=("baseline_scores",))
def greedy_baseline_advantages(batch: Batch, kl_coef: float, group_size: int, p: SimpleNamespace,
                               reduce: Reduce = None, state: Any = None):
    """ReMax's (Li et al., 2023): the reward-to-go of the per-token rewards minus the task reward of the greedy
    response to the same prompt (``baseline_scores``, added by the ``greedy_baseline`` rollout hook)."""
    mask = batch["response_mask"]
    rewards = kl_shaped_token_rewards(batch["scores"], batch["kl"], mask, kl_coef, batch.get("token_scores"))
    adv = remax_advantages(rewards, batch["baseline_scores"], mask)
    seq_adv = adv[:, 0]
    return {"advantages": adv}, {"seq_advantage_mean": seq_adv.mean(),
                                 "sampled_beats_greedy_frac": (seq_adv > 0).float().mean()}
