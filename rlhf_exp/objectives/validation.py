"""Checks of the ``objective`` config block against what it declares, before anything loads.

An online objective's block names an advantage estimator and a policy loss (the registries in
:mod:`rlhf_exp.core.advantages` and :mod:`rlhf_exp.core.losses`) and its rollout hooks
(:mod:`rlhf_exp.objectives.hooks`); each declares the parameters it reads, and :data:`ONLINE_PARAMS` are the ones
every online objective has. An offline objective's class declares its own (``params``). :func:`validate_objective`
checks that every declared parameter is set, has its type and lies in its range, that no key is unknown, and that
the parts fit together (group sizes, the batch keys an estimator needs, the advantages a loss takes); each problem
is an :class:`ObjectiveConfigError` naming the key, the value and what is valid.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Sequence

from rlhf_exp.core.advantages import ADV_ESTIMATORS
from rlhf_exp.core.kl import KL_ESTIMATORS
from rlhf_exp.core.losses import LOSS_AGGREGATIONS, POLICY_LOSSES
from rlhf_exp.core.registry import Param, read_params
from rlhf_exp.objectives.hooks import ROLLOUT_HOOKS

ONLINE, OFFLINE = "online", "offline"


class ObjectiveConfigError(ValueError):
    """A setting of the ``objective`` block that cannot work; the message names the key and what is valid."""


COMMON_PARAMS = (
    Param("name", str, "the objective's name (its yaml file)"),
    Param("kind", str, "online (sampled from the policy) or offline (from a dataset)", choices=(ONLINE, OFFLINE)),
)

ONLINE_PARAMS = COMMON_PARAMS + (
    Param("estimator", str, "the advantage estimator (rlhf_exp/core/advantages.py)",
          choices=tuple(ADV_ESTIMATORS.names())),
    Param("policy_loss", str, "the policy loss (rlhf_exp/core/losses.py)", choices=tuple(POLICY_LOSSES.names())),
    Param("rollout_hooks", list, "what the objective adds to the rollout (rlhf_exp/objectives/hooks.py): "
          + ", ".join(sorted(ROLLOUT_HOOKS))),
    Param("kl_in_reward", bool, "where the KL penalty goes unless kl.in_reward says: true = in the reward, false = "
          "in the loss"),
    Param("kl_estimator", str, "the KL estimator unless kl.estimator says", choices=KL_ESTIMATORS),
    Param("adaptive_kl_coef", float, "kl=adaptive's initial kl.kl_coef for this objective", "> 0",
          lambda v: v > 0, optional=True),
    Param("adaptive_kl_horizon", float, "kl=adaptive's kl.horizon for this objective", "> 0", lambda v: v > 0,
          optional=True),
    Param("group_size", int, "completions per prompt (train.batch_size must be a multiple)", ">= 1",
          lambda v: v >= 1),
    Param("entropy_coef", float, "weight of the entropy bonus", ">= 0", lambda v: v >= 0),
    Param("kl_bias_correction", bool, "KL term in the loss times pi/pi_old (TRL's use_bias_correction_kl)"),
    Param("mask_truncated_completions", bool, "responses cut at their length limit (no EOS) take no loss"),
    Param("loss_aggregation", str, "how token terms are reduced to the loss (rlhf_exp.core.losses.aggregate_loss)",
          choices=LOSS_AGGREGATIONS),
)


def _where(block: Mapping[str, Any]) -> str:
    name = block.get("name")
    if block.get("kind") == ONLINE and "estimator" in block:
        return f"objective={name}: estimator {block.get('estimator')}, policy_loss {block.get('policy_loss')}"
    return f"objective={name}"


def _check_params(params: Sequence[Param], block: Mapping[str, Any], prefix: str, where: str) -> None:
    for p in params:
        present = [n for n in p.names if n in block]
        if len(present) > 1:
            raise ObjectiveConfigError(f"{prefix}{present[0]} and {prefix}{present[1]} are the same setting ({p.doc}); "
                                       f"set one of them ({where}).")
        if not present:
            if p.optional:
                continue
            also = f" (or {', '.join(prefix + a for a in p.aliases)})" if p.aliases else ""
            raise ObjectiveConfigError(f"{prefix}{p.name}{also} is missing: {p.doc}; {p.requirement()} ({where}). Set "
                                       f"it in the objective's yaml or on the command line.")
        value = block[present[0]]
        problem = p.problem(value)
        if problem is not None:
            raise ObjectiveConfigError(f"{prefix}{present[0]} {problem} ({p.doc}; {where}).")


def _check_unknown(block: Mapping[str, Any], known: Sequence[str], prefix: str, where: str) -> None:
    for key in block:
        if key not in known:
            guess = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
            hint = f" Did you mean {prefix}{guess[0]}?" if guess else ""
            raise ObjectiveConfigError(f"{prefix}{key} is not a setting of {where} (its settings: "
                                       f"{', '.join(sorted(known))}).{hint}")


def _plain(block: Any) -> Any:
    """An OmegaConf node as plain Python (dicts, lists), resolved."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(block):
            return OmegaConf.to_container(block, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return block


def validate_online(block: Mapping[str, Any]) -> None:
    where = _where(block)
    _check_params(ONLINE_PARAMS, block, "objective.", where)
    est, loss = ADV_ESTIMATORS[block["estimator"]], POLICY_LOSSES[block["policy_loss"]]
    if est.level == "token" and loss.advantages == "sequence":
        raise ObjectiveConfigError(f"the estimator {est.name} gives per-token advantages; the policy loss {loss.name} "
                                   f"takes one advantage per sequence ({where}). Choose a sequence-level estimator "
                                   f"or a token-level loss.")
    hooks = []
    for name in block["rollout_hooks"]:
        if name not in ROLLOUT_HOOKS:
            raise ObjectiveConfigError(f"objective.rollout_hooks: unknown hook {name!r} ({where}); known: "
                                       f"{', '.join(sorted(ROLLOUT_HOOKS))}.")
        hooks.append(ROLLOUT_HOOKS[name])
    provided = {k for h in hooks for k in h.provides}
    for key in est.requires:
        if key not in provided:
            givers = [h.name for h in ROLLOUT_HOOKS.values() if key in h.provides]
            raise ObjectiveConfigError(f"the estimator {est.name} reads batch[{key!r}], which no rollout hook of "
                                       f"objective={block['name']} adds: add {' or '.join(givers)} to "
                                       f"objective.rollout_hooks ({where}).")
    _check_params(est.params, block, "objective.", f"{where}; read by the estimator")
    _check_params(loss.params, block, "objective.", f"{where}; read by the policy loss")
    known = [n for p in ONLINE_PARAMS + est.params + loss.params for n in p.names]
    for h in hooks:
        if h.block:
            sub = block.get(h.block)
            if not isinstance(sub, Mapping):
                raise ObjectiveConfigError(f"objective.{h.block} is missing: the settings of the {h.name} rollout hook "
                                           f"({', '.join(p.name for p in h.params)}; {where}).")
            _check_params(h.params, sub, f"objective.{h.block}.", where)
            _check_unknown(sub, [n for p in h.params for n in p.names], f"objective.{h.block}.", where)
            known.append(h.block)
    _check_unknown(block, known, "objective.", where)

    G = int(block["group_size"])
    if G < est.min_group_size:
        raise ObjectiveConfigError(f"objective={block['name']} needs objective.group_size >= {est.min_group_size} "
                                   f"(completions per prompt; estimator {est.name}), got {G}.")
    if est.max_group_size is not None and G > est.max_group_size:
        raise ObjectiveConfigError(f"objective={block['name']} samples one response per prompt (estimator {est.name}: "
                                   f"its baseline is the greedy one): objective.group_size must be "
                                   f"{est.max_group_size}, got {G}.")
    if est.check is not None:
        problem = est.check(read_params(est.params, block), G)
        if problem:
            raise ObjectiveConfigError(f"{problem} ({where}).")
    for h in hooks:
        problem = h.problem(read_params(h.params, block[h.block]) if h.block else None, G)
        if problem:
            raise ObjectiveConfigError(f"{problem} ({where}).")


def validate_offline(block: Mapping[str, Any], params: Sequence[Param]) -> None:
    where = _where(block)
    params = tuple(COMMON_PARAMS) + tuple(params)
    _check_params(params, block, "objective.", where)
    _check_unknown(block, [n for p in params for n in p.names], "objective.", where)
