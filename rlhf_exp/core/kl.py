"""KL estimators between the policy and the frozen reference, and the KL coefficient controllers.

Per-token estimators of ``KL(pi || pi_ref)`` from tokens sampled from ``pi`` (Schulman, "Approximating KL
divergence", 2020), with ``log_ratio = log pi(a|s) - log pi_ref(a|s)``:

=========  ==========================================  =====================================================
name       per-token value                             properties
=========  ==========================================  =====================================================
``k1``     ``log_ratio``                               unbiased; negative for some samples (never clamped)
``k2``     ``0.5 * log_ratio**2``                      biased, >= 0, low variance
``k3``     ``exp(-log_ratio) - 1 + log_ratio``         unbiased, >= 0 (GRPO's default in the loss)
``abs``    ``|log_ratio|``                             biased, >= 0
``full``   ``sum_v pi(v|s) (log pi(v|s) - log pi_ref(v|s))``  exact per-state KL over the vocabulary, >= 0
=========  ==========================================  =====================================================

The controllers (:class:`FixedKLController`, :class:`AdaptiveKLController`, :class:`NoKLController`) hold the
coefficient ``beta``. The adaptive one is Ziegler et al. (2019), "Fine-Tuning Language Models from Human
Preferences": ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + e * n / horizon)`` where ``KL`` is the
mean over sequences of the summed per-token log-ratio and ``n`` the number of sequences in the batch.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from rlhf_exp.core.losses import logit_blocks
from rlhf_exp.core.state import check_keys

KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "full")


def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """``(B, T) -> (B, T)``: the naive estimator ``log pi - log pi_ref``."""
    return log_ratio


def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """``(B, T) -> (B, T)``: ``0.5 * log_ratio**2``."""
    return 0.5 * log_ratio.pow(2)


def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """``(B, T) -> (B, T)``: ``r - 1 - log r`` with ``r = pi_ref / pi``; unbiased and never negative.

    The log-ratio is clamped to [-20, 20] inside the exponential only, to keep it finite for wild samples.
    """
    neg = (-log_ratio).clamp(min=-20.0, max=20.0)
    return torch.exp(neg) - 1.0 - neg


def kl_abs(log_ratio: torch.Tensor) -> torch.Tensor:
    """``(B, T) -> (B, T)``: ``|log pi - log pi_ref|``."""
    return log_ratio.abs()


def full_kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor, chunk_rows: int | None = None
                        ) -> torch.Tensor:
    """Exact per-position ``KL(pi(.|s) || pi_ref(.|s))`` summed over the vocabulary.

    Args:
        logits: ``(B, T, V)`` policy logits (already divided by the sampling temperature).
        ref_logits: ``(B, T, V)`` reference logits (same temperature).
        chunk_rows: positions per block (default: ``CHUNK_ELEMENTS // V``); only one block is upcast to fp32 at a
            time, never the whole ``(B, T, V)`` logits.
    Returns:
        ``(B, T)`` float32, every entry >= 0 (up to float rounding); differentiable in ``logits``.
    """
    B, T, V = logits.shape
    out = torch.empty(B, T, dtype=torch.float32, device=logits.device)
    for bs, ts in logit_blocks(B, T, V, chunk_rows):
        logp = F.log_softmax(logits[bs, ts].float(), dim=-1)
        logq = F.log_softmax(ref_logits[bs, ts].float(), dim=-1)
        out[bs, ts] = (logp.exp() * (logp - logq)).sum(-1)
    return out


_SAMPLED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3, "abs": kl_abs}


def check_estimator(name: str) -> str:
    if name not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {name!r}. Valid: {', '.join(KL_ESTIMATORS)} (set kl.estimator=...).")
    return name


def per_token_kl(
    estimator: str,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    full_kl: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-token KL penalty with the named estimator.

    Args:
        estimator: one of ``k1, k2, k3, abs, full``.
        logprobs: ``(B, T)`` log-probs of the sampled tokens under the policy.
        ref_logprobs: ``(B, T)`` the same under the reference.
        full_kl: ``(B, T)`` from :func:`full_kl_from_logits`; required for ``full``.
    Returns:
        ``(B, T)``; mask it before reducing.
    """
    check_estimator(estimator)
    if estimator == "full":
        if full_kl is None:
            raise ValueError("kl.estimator=full needs the full-vocabulary KL (compute it with full_kl_from_logits).")
        return full_kl
    return _SAMPLED[estimator](logprobs - ref_logprobs)


# --------------------------------------------------------------------------------------------- controllers


class KLController:
    """Holds the KL coefficient ``value`` (beta) and updates it once per rollout batch."""

    name = "base"
    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The current coefficient (the target, horizon and clip come from the config)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        check_keys(state, ("value",), f"the KL controller ({self.name})")
        self.value = float(state["value"])


class FixedKLController(KLController):
    """A constant coefficient."""

    name = "fixed"

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl.kl_coef must be >= 0, got {kl_coef}.")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class NoKLController(KLController):
    """No KL control: the coefficient is 0. The KL to the reference is still measured and logged."""

    name = "none"

    def __init__(self, kl_coef: float = 0.0):
        self.value = 0.0

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController(KLController):
    """Ziegler et al. (2019) proportional controller.

    ``error = clip(current_kl / target - 1, -clip, clip)``; ``value *= 1 + error * n_steps / horizon``.
    Above the target the coefficient grows, below it shrinks, by at most ``clip * n_steps / horizon`` per update.
    """

    name = "adaptive"

    def __init__(self, kl_coef: float, target: float, horizon: float, clip: float = 0.2):
        if kl_coef <= 0:
            raise ValueError(f"kl=adaptive needs kl.kl_coef > 0 (the initial coefficient), got {kl_coef}.")
        if target <= 0 or horizon <= 0:
            raise ValueError(f"kl=adaptive needs kl.target > 0 and kl.horizon > 0, got {target} and {horizon}.")
        self.value = float(kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)
        self.clip = float(clip)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -self.clip), self.clip)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_unused(kl_cfg) -> bool:
    """True when the KL cannot enter the loss or the reward: ``kl=none``, or ``kl=fixed`` with ``kl_coef`` 0."""
    controller = str(kl_cfg.get("controller"))
    return controller == "none" or (controller == "fixed" and float(kl_cfg["kl_coef"]) == 0.0)


def make_kl_controller(controller: str, kl_coef: float, target: float | None = None, horizon: float | None = None,
                       clip: float = 0.2) -> KLController:
    """Build a controller by name: ``fixed``, ``adaptive`` or ``none``."""
    if controller == "fixed":
        return FixedKLController(kl_coef)
    if controller == "adaptive":
        if target is None or horizon is None:
            raise ValueError("kl=adaptive needs kl.target and kl.horizon.")
        return AdaptiveKLController(kl_coef, target, horizon, clip)
    if controller == "none":
        return NoKLController()
    raise ValueError(f"Unknown KL controller {controller!r}. Valid: fixed, adaptive, none (choose with kl=<name>).")
