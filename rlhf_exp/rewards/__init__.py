"""Rewards: one interface (:class:`RewardModel`), built from the ``reward_model`` config group by ``kind``.

Kinds: ``hf_classifier`` (any ``AutoModelForSequenceClassification``), ``vader`` (lexicon sentiment), ``function``
(any importable TRL-style reward function), ``learned`` (a model trained by ``objective=reward``), ``composite`` (a weighted sum of any of these). See docs/rewards.md.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf

from rlhf_exp.config.schema import complete_reward
from rlhf_exp.rewards.base import RewardError, RewardModel, RewardOutput, to_score_tensor

__all__ = ["RewardError", "RewardModel", "RewardOutput", "to_score_tensor", "build_reward_model", "REWARD_KINDS"]

COMMON_KEYS = ("kind", "name")


def _check_keys(cfg: Mapping[str, Any], allowed: tuple[str, ...], option: str) -> None:
    """Reject misspelled options (they would otherwise be ignored silently)."""
    unknown = sorted(set(cfg) - set(allowed) - set(COMMON_KEYS))
    if unknown:
        raise ValueError(f"{option}: unknown option(s) {', '.join(unknown)} for kind={cfg.get('kind')}. Valid: "
                         f"{', '.join(sorted(set(allowed) | set(COMMON_KEYS)))}.")


def _hf_classifier(cfg: Mapping[str, Any], option: str = "reward_model") -> RewardModel:
    from rlhf_exp.rewards.hf_classifier import HFClassifierReward

    _check_keys(cfg, ("path", "label", "output", "input", "batch_size", "max_length", "per_token",
                      "truncation_side"), option)
    return HFClassifierReward(
        path=cfg["path"], label=cfg["label"], output=cfg["output"], input=cfg["input"], batch_size=cfg["batch_size"],
        max_length=cfg["max_length"], name=cfg["name"], per_token=cfg["per_token"],
        truncation_side=cfg["truncation_side"], option=f"{option}.path",
    )


def _vader(cfg: Mapping[str, Any], option: str = "reward_model") -> RewardModel:
    from rlhf_exp.rewards.vader import VaderReward

    _check_keys(cfg, ("field", "input"), option)
    return VaderReward(field=cfg["field"], input=cfg["input"], name=cfg["name"], option=option)


def _learned(cfg: Mapping[str, Any], option: str = "reward_model") -> RewardModel:
    from rlhf_exp.rewards.learned import LearnedReward

    _check_keys(cfg, ("path", "input", "batch_size", "max_length"), option)
    return LearnedReward(path=cfg["path"], batch_size=cfg["batch_size"], max_length=cfg["max_length"],
                         name=cfg["name"], input=cfg["input"])


def _function(cfg: Mapping[str, Any], option: str = "reward_model") -> RewardModel:
    from rlhf_exp.rewards.callable_reward import FunctionReward

    _check_keys(cfg, ("fn", "kwargs", "none_value"), option)
    if not cfg["fn"]:
        raise ValueError(f"{option}.fn is not set: give an importable function ({option}.fn=mypkg.rewards:my_reward) "
                         f"or one of ours ({option}.fn=target_length | repetition_penalty | regex_match).")
    kwargs = cfg["kwargs"]
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)
    return FunctionReward(fn=cfg["fn"], kwargs=kwargs, name=cfg["name"], none_value=cfg["none_value"],
                          option=option)


def _composite(cfg: Mapping[str, Any], option: str = "reward_model") -> RewardModel:
    from rlhf_exp.rewards.composite import CompositeReward

    _check_keys(cfg, ("parts",), option)
    parts = {}
    for part_name, part_cfg in cfg["parts"].items():
        if part_cfg is None:  # a part switched off with reward_model.parts.<name>=null
            continue
        part_option = f"{option}.parts.{part_name}"
        if not isinstance(part_cfg, Mapping) or "kind" not in part_cfg:
            raise ValueError(f"{part_option} must be a reward config with a kind (and a weight), got {part_cfg!r}.")
        if part_cfg["kind"] not in REWARD_KINDS:
            raise ValueError(f"Unknown {part_option}.kind {part_cfg['kind']!r}. Valid: "
                             f"{', '.join(sorted(REWARD_KINDS))}.")
        if "weight" not in part_cfg:
            raise ValueError(f"{part_option}.weight is missing: every part of a composite reward has a weight "
                             f"(0 = only logged).")
        weight = part_cfg["weight"]
        if weight is None or isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"{part_option}.weight must be a number, got {weight!r}.")
        sub = {k: v for k, v in part_cfg.items() if k != "weight"}
        sub["name"] = str(part_name)
        parts[str(part_name)] = (float(weight), build_reward_model(sub, part_option))
    return CompositeReward(parts, name=cfg["name"])


REWARD_KINDS: dict[str, Callable[..., RewardModel]] = {"hf_classifier": _hf_classifier}
REWARD_KINDS.update(vader=_vader, function=_function, composite=_composite, learned=_learned)


def build_reward_model(cfg: Mapping[str, Any], option: str = "reward_model") -> RewardModel:
    """Build the reward named by ``cfg.kind`` (see ``conf/reward_model/``).

    ``option`` is where the config sits (``reward_model``, or ``reward_model.parts.<name>`` in a composite); error
    messages name it. A kind's factory takes ``(cfg)`` or ``(cfg, option)``.
    """
    kind = cfg.get("kind")
    if kind not in REWARD_KINDS:
        raise ValueError(f"Unknown {option}.kind {kind!r}. Valid: {', '.join(sorted(REWARD_KINDS))}.")
    # keys a config leaves out (a composite part written inline: +reward_model.parts.x={kind: ..., weight: ...})
    # come from its kind's preset in conf/reward_model/, which the config schema names: the yaml's defaults
    cfg = complete_reward(cfg)
    factory = REWARD_KINDS[kind]
    if len(inspect.signature(factory).parameters) >= 2:
        return factory(cfg, option)
    return factory(cfg)
