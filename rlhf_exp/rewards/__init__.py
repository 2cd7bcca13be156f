"""Rewards: one interface (:class:`RewardModel`), built from the ``reward_model`` config group by ``kind``."""
from __future__ import annotations

from typing import Any, Mapping

from rlhf_exp.rewards.base import RewardError, RewardModel, RewardOutput, to_score_tensor

__all__ = ["RewardError", "RewardModel", "RewardOutput", "to_score_tensor", "build_reward_model", "REWARD_KINDS"]


def _hf_classifier(cfg: Mapping[str, Any]) -> RewardModel:
    from rlhf_exp.rewards.hf_classifier import HFClassifierReward

    return HFClassifierReward(
        path=cfg["path"], label=cfg.get("label", "POSITIVE"), output=cfg.get("output", "logit"),
        input=cfg.get("input", "prompt+completion"), batch_size=cfg.get("batch_size", 64),
        max_length=cfg.get("max_length", 512), name=cfg.get("name", "classifier"),
        per_token=cfg.get("per_token", False),
    )


def _learned(cfg: Mapping[str, Any]) -> RewardModel:
    from rlhf_exp.rewards.learned import LearnedReward

    return LearnedReward(path=cfg.get("path"), batch_size=cfg.get("batch_size", 64),
                         max_length=cfg.get("max_length", 512), name=cfg.get("name", "learned"),
                         input=cfg.get("input", "prompt+completion"))


REWARD_KINDS = {"hf_classifier": _hf_classifier, "learned": _learned}


def build_reward_model(cfg: Mapping[str, Any]) -> RewardModel:
    """Build the reward named by ``cfg.kind`` (see ``conf/reward_model/``)."""
    kind = cfg.get("kind")
    if kind not in REWARD_KINDS:
        raise ValueError(f"Unknown reward_model.kind {kind!r}. Valid: {', '.join(sorted(REWARD_KINDS))}.")
    return REWARD_KINDS[kind](cfg)
