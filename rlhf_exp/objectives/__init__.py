"""Objectives by name: ``objective.name`` in the config selects the class here.

Online (``rlhf_exp.train.online``): each class turns a scored rollout into advantages and a minibatch loss; the loop
around them is shared.

Offline (``rlhf_exp.train.offline``): sft, reward, dpo, kto; each encodes its records and gives a loss on a
micro-batch of them (see ``rlhf_exp.objectives.offline_base``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from rlhf_exp.objectives.base import OnlineObjective
from rlhf_exp.objectives.dpo import DPO
from rlhf_exp.objectives.kto import KTO
from rlhf_exp.objectives.offline_base import OfflineObjective
from rlhf_exp.objectives.reward_modelling import RewardModelling
from rlhf_exp.objectives.sft import SFT
from rlhf_exp.objectives.grpo import GRPO
from rlhf_exp.objectives.ppo import PPO
from rlhf_exp.objectives.ppo_seq import PPOSeq
from rlhf_exp.objectives.reinforce import KLReinforce, Reinforce
from rlhf_exp.objectives.reinforce_pp import ReinforcePP
from rlhf_exp.objectives.remax import ReMax
from rlhf_exp.objectives.rloo import RLOO
from rlhf_exp.objectives.token_reinforce import TokenReinforce

ONLINE_OBJECTIVES: dict[str, type[OnlineObjective]] = {
    cls.name: cls for cls in (PPO, PPOSeq, Reinforce, KLReinforce, TokenReinforce, GRPO, RLOO, ReinforcePP, ReMax)
}


def build_online_objective(cfg: Mapping[str, Any], kl_cfg: Mapping[str, Any],
                           max_new_tokens: Optional[int] = None) -> OnlineObjective:
    name = cfg.get("name")
    if name not in ONLINE_OBJECTIVES:
        raise ValueError(f"Unknown online objective {name!r}. Valid: {', '.join(sorted(ONLINE_OBJECTIVES))}.")
    return ONLINE_OBJECTIVES[name](cfg, kl_cfg, max_new_tokens)


OFFLINE_OBJECTIVES: dict[str, type[OfflineObjective]] = {cls.name: cls for cls in (SFT, RewardModelling, DPO, KTO)}


def build_offline_objective(cfg: Mapping[str, Any]) -> OfflineObjective:
    name = cfg.get("name")
    if name not in OFFLINE_OBJECTIVES:
        raise ValueError(f"Unknown offline objective {name!r}. Valid: {', '.join(sorted(OFFLINE_OBJECTIVES))}.")
    return OFFLINE_OBJECTIVES[name](cfg)
