"""Objectives from their config block: ``objective=<name>`` selects ``conf/objective/<name>.yaml``.

Online (``rlhf_exp.train.online``): every online objective is an :class:`~rlhf_exp.objectives.base.OnlineObjective`,
the composition its yaml names: an advantage estimator, a policy loss and rollout hooks (docs/objectives.md). A new
one that recombines registered parts is a yaml file only.

Offline (``rlhf_exp.train.offline``): sft, reward, dpo, kto; each class encodes its records and gives a loss on a
micro-batch of them (see ``rlhf_exp.objectives.offline_base``).

:func:`validate_objective` checks an ``objective`` block against what its parts declare, before anything loads.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from rlhf_exp.objectives.base import OnlineObjective
from rlhf_exp.objectives.dpo import DPO
from rlhf_exp.objectives.kto import KTO
from rlhf_exp.objectives.offline_base import OfflineObjective
from rlhf_exp.objectives.reward_modelling import RewardModelling
from rlhf_exp.objectives.sft import SFT
from rlhf_exp.objectives.validation import (OFFLINE, ONLINE, ObjectiveConfigError, _plain, validate_offline,
                                            validate_online)

OFFLINE_OBJECTIVES: dict[str, type[OfflineObjective]] = {cls.name: cls for cls in (SFT, RewardModelling, DPO, KTO)}


def validate_objective(cfg: Mapping[str, Any]) -> None:
    """Check the composed ``objective`` block: every parameter its parts declare is set, of its type and in its
    range; no unknown key; the parts fit together. Raises :class:`ObjectiveConfigError` naming the key."""
    block = _plain(cfg)
    kind = block.get("kind")
    if kind == ONLINE:
        validate_online(block)
    elif kind == OFFLINE:
        name = block.get("name")
        if name not in OFFLINE_OBJECTIVES:
            raise ObjectiveConfigError(f"objective.name={name!r} is not an offline objective; valid: "
                                       f"{', '.join(sorted(OFFLINE_OBJECTIVES))}.")
        OFFLINE_OBJECTIVES[name].validate(block)
    else:
        raise ObjectiveConfigError(f"objective.kind must be {ONLINE!r} or {OFFLINE!r}, got {kind!r} in "
                                   f"objective={block.get('name')}.")


def build_online_objective(cfg: Mapping[str, Any], kl_cfg: Mapping[str, Any],
                           max_new_tokens: Optional[int] = None) -> OnlineObjective:
    """The online objective of a composed ``objective`` block, with the ``kl`` block."""
    block = _plain(cfg)
    if block.get("kind") != ONLINE:
        raise ObjectiveConfigError(f"objective={block.get('name')} is not an online objective (objective.kind="
                                   f"{block.get('kind')!r}).")
    return OnlineObjective(block, _plain(kl_cfg), max_new_tokens)


def build_offline_objective(cfg: Mapping[str, Any]) -> OfflineObjective:
    """The offline objective of a composed ``objective`` block."""
    block = _plain(cfg)
    validate_objective(block)
    if block["kind"] != OFFLINE:
        raise ObjectiveConfigError(f"objective={block['name']} is not an offline objective.")
    return OFFLINE_OBJECTIVES[block["name"]](block)


def min_local_micro_batch(cfg: Mapping[str, Any]) -> int:
    """The smallest per-process micro-batch the objective accepts (KTO pairs each completion with another prompt)."""
    if cfg["kind"] == OFFLINE and cfg["name"] in OFFLINE_OBJECTIVES:
        return OFFLINE_OBJECTIVES[cfg["name"]].min_local_micro_batch
    return 1


__all__ = ["OnlineObjective", "OfflineObjective", "OFFLINE_OBJECTIVES", "ObjectiveConfigError", "validate_objective",
           "build_online_objective", "build_offline_objective", "min_local_micro_batch"]
