"""``validate(cfg)``: every setting of the composed config checked against the schema before anything loads, then
the checks that involve several settings, then the settings the chosen options ignore.

Settings a chosen option ignores are refused when the run would have come out differently had they applied (the
user expects an effect on what is trained or measured: ``kl=none kl.kl_coef=0.5``, LoRA settings with
``model.lora.r=0``, ``train.warmup_steps`` with the constant schedule). They are only warned about when they would
have changed speed, memory or logging alone (``kl.track=false`` while the KL is used, vLLM engine settings with
``generation.backend=hf``), and when they belong to the other kind of objective (``kl.*``, ``reward.*``,
``train.epochs``, ``dataset.train_size`` in an offline run; ``dataset.offline_*`` in an online one): one command
line often serves both, in a pipeline (sweeps/pipeline.sh passes its arguments to every stage) or in a sweep over
online and offline objectives. A key that the chosen option does not have at all (``kl.target`` with ``kl=fixed``,
``reward_model.label`` with a function reward) is an unknown key, refused with the option that has it.
"""
from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from rlhf_exp.config.errors import ConfigError, closest
from rlhf_exp.config.paths import config_groups, group_options
from rlhf_exp.config.schema import (GROUPS, OFFLINE, VLLM, Run, check_block, check_kind, complete_reward,
                                    settings_of)


def resolved(cfg) -> dict:
    """The composed config as plain Python values, interpolations resolved."""
    if not OmegaConf.is_config(cfg):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve, a missing value (???)
        raise ConfigError(f"the config does not resolve: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def unknown_top_key_error(key: str) -> Optional[ConfigError]:
    """The error for a top-level key (or a key under a top-level block: ``train.stepz``) that the schema does not
    declare, with the closest group or setting; None when the key is known, a config group's (checked by the
    group's schema after composition) or Hydra's own."""
    groups, settings = config_groups(), settings_of(Run)
    top = key.split(".", 1)[0]
    if top == "hydra" or top in groups or top in GROUPS:
        return None
    if top not in settings:
        guess = closest(top, groups + list(settings))
        hint = ""
        if guess in groups:
            hint = f" Did you mean {guess}=? (options: {', '.join(group_options(guess))})"
        elif guess:
            hint = f" Did you mean {guess}?"
        return ConfigError(f"Unknown config key {key!r}: not a config group ({', '.join(groups)}) nor a setting of "
                           f"conf/config.yaml.{hint}")
    block, path = Run, []
    for part in key.split("."):
        fields = settings_of(block) if isinstance(block, type) and hasattr(block, "__dataclass_fields__") else None
        if fields is None:
            return None          # inside a list or a free mapping
        if part not in fields:
            known = [".".join(path + [k]) for k in fields]
            guess = closest(".".join(path + [part]), known)
            hint = f" Did you mean {guess}?" if guess else f" Known keys: {', '.join(k.split('.')[-1] for k in known)}."
            return ConfigError(f"Unknown config key {key!r}: conf/config.yaml has no such setting.{hint}")
        path.append(part)
        block = fields[part][1]
    return None


def _check_schema(c: dict) -> None:
    for key in c:
        if key in GROUPS:
            continue
        error = unknown_top_key_error(str(key))
        if error is None and key not in settings_of(Run):
            error = ConfigError(f"Unknown config key {key!r}.")
        if error is not None:
            raise error
    for key, (_, tp) in settings_of(Run).items():   # nested blocks: unknown keys worded as on the command line
        if isinstance(c.get(key), dict) and hasattr(tp, "__dataclass_fields__"):
            for sub in _flat(c[key], key):
                error = unknown_top_key_error(sub)
                if error is not None:
                    raise error
    check_block({k: v for k, v in c.items() if k not in GROUPS}, Run, "")
    for group in GROUPS:
        if group not in c:
            raise ConfigError(f"the config has no {group} group (pick one: {group}=<option>).")
        check_kind(group, c[group])


def _flat(tree: dict, prefix: str) -> list[str]:
    out = []
    for k, v in tree.items():
        out += _flat(v, f"{prefix}.{k}") if isinstance(v, dict) and v else [f"{prefix}.{k}"]
    return out


# --------------------------------------------------------------------------------------- the objective's own keys
def _check_objective(cfg) -> None:
    """The objective's own parameters: every setting its estimator, loss and rollout hooks declare, checked by
    ``rlhf_exp.objectives.validate_objective`` (docs/objectives.md); this module checks only the keys every objective
    has (``ObjectiveBase`` and its online/offline subclasses in schema.py)."""
    from rlhf_exp.objectives import ObjectiveConfigError, validate_objective

    try:
        validate_objective(cfg.objective if OmegaConf.is_config(cfg) else OmegaConf.create(cfg["objective"]))
    except ObjectiveConfigError as e:
        raise ConfigError(str(e)) from None


# --------------------------------------------------------------------------------------- settings together
def _check_generation(c: dict) -> None:
    g = c["generation"]
    if g["min_new_tokens"] > g["max_new_tokens"]:
        raise ConfigError(f"generation.min_new_tokens ({g['min_new_tokens']}) must be <= generation.max_new_tokens "
                          f"({g['max_new_tokens']}).")


def _check_precision(c: dict) -> None:
    if c["train"]["mixed_precision"] != "fp16":
        return
    import torch

    if c["device"] == "cpu" or not torch.cuda.is_available():
        where = "device=cpu" if c["device"] == "cpu" else "no CUDA device is visible"
        raise ConfigError(f"train.mixed_precision=fp16 needs a CUDA GPU ({where}); on CPU use "
                          f"train.mixed_precision=bf16 or no.")


def _function_rewards(rm: dict, option: str):
    """``(option, config)`` of every ``kind: function`` reward in ``reward_model`` and its composite parts."""
    if rm["kind"] == "function":
        yield option, rm
    if rm["kind"] == "composite":
        for name, part in rm["parts"].items():
            if part is not None:
                yield from _function_rewards(complete_reward(part), f"{option}.parts.{name}")


def _check_reward_kwargs(c: dict) -> None:
    """The ``kwargs`` of a shipped reward function (``fn: target_length``...) must be arguments it names: they take
    ``**kwargs`` for the dataset columns, so a misspelled one would be swallowed silently."""
    import inspect

    from rlhf_exp.rewards import functions

    loop_arguments = {"prompts", "completions", "completion_ids"}
    for option, rm in _function_rewards(c["reward_model"], "reward_model"):
        fn = str(rm["fn"] or "")
        if ":" in fn or "." in fn or not callable(getattr(functions, fn, None)):
            continue
        params = inspect.signature(getattr(functions, fn)).parameters
        known = sorted(n for n, p in params.items()
                       if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in loop_arguments)
        for name in rm["kwargs"]:
            if name not in known:
                guess = closest(str(name), known)
                hint = f" Did you mean {guess}?" if guess else ""
                raise ConfigError(f"{option}.kwargs.{name}: {fn} takes no argument {name!r} (its arguments: "
                                  f"{', '.join(known) or 'none'}).{hint}")


def _check_backend(c: dict) -> None:
    """``generation.backend=vllm`` needs vLLM; ``generation.vllm.importance_correction`` corrects the gap between a
    separate sampler and the trainer: only ``generation.backend=vllm`` has one."""
    g = c["generation"]
    if g["backend"] == "vllm":
        from rlhf_exp.rollout.vllm_engine import INSTALL_HINT, vllm_available

        if not vllm_available():
            raise ConfigError(f"{INSTALL_HINT} (vllm is not installed in {sys.prefix}).")
    if g["vllm"]["importance_correction"] and g["backend"] != "vllm":
        raise ConfigError(f"generation.vllm.importance_correction=true needs generation.backend=vllm (with "
                          f"generation.backend={g['backend']} the sampler is the trained model itself: there is "
                          f"no sampler/trainer gap to correct).")


# --------------------------------------------------------------------------------------- ignored settings
@dataclass(frozen=True)
class Ignored:
    """Settings (``keys``, glob patterns) that do nothing ``when`` the chosen options are what they are, and why.
    ``refuse``: an error (the run would have come out differently had they applied); else a warning (only speed,
    memory or logging would have changed). Only keys set on the command line (or by a sweep) are reported."""

    keys: tuple[str, ...]
    when: Callable[[dict], bool]
    why: str
    refuse: bool


def _offline(c: dict) -> bool:
    return c["objective"]["kind"] == OFFLINE


def _kl_used(c: dict) -> bool:
    k = c["kl"]
    return k["controller"] == "adaptive" or (k["controller"] == "fixed" and k["kl_coef"] > 0)


IGNORED: list[Ignored] = [
    Ignored(("model.lora.alpha", "model.lora.dropout", "model.lora.target_modules", "model.lora.save"),
            lambda c: c["model"]["lora"]["r"] == 0, "model.lora.r=0 is full fine-tuning (no adapters); set "
                                                    "model.lora.r=<rank> for LoRA", True),
    Ignored(("generation.vllm.importance_cap",), lambda c: not c["generation"]["vllm"]["importance_correction"],
            "it caps the weights of generation.vllm.importance_correction, which is false", True),
    Ignored(("kl.*",), _offline, "offline objectives have no KL controller (dpo and kto: objective.beta sets the "
                                 "strength of their implicit KL constraint)", False),
    Ignored(("reward.*",), _offline, "reward preprocessing applies to the rewards of online training; offline runs "
                                     "evaluate the policy on raw task rewards", False),
    Ignored(("train.epochs",), _offline, "offline objectives make one optimizer step per batch (train.steps sets "
                                         "the length)", False),
    Ignored(("dataset.train_size",), _offline, "offline runs train on dataset.offline_train_size records", False),
    Ignored(("dataset.offline_train_size", "dataset.offline_eval_size"), lambda c: not _offline(c),
            "online runs read dataset.train_size and dataset.eval_size prompts", False),
    Ignored(("generation.top_k", "generation.top_p"),
            lambda c: not c["eval"]["do_sample"] and (_offline(c) or c["train"]["steps"] == 0),
            "no training rollouts are sampled here and the evaluation decodes greedily (eval.do_sample=false)", False),
    Ignored(tuple(f"generation.vllm.{k}" for k in settings_of(VLLM) if not k.startswith("importance_")),
            lambda c: c["generation"]["backend"] != "vllm",
            "vLLM engine settings apply to generation.backend=vllm only", False),
    Ignored(("generation.compile",), lambda c: c["generation"]["backend"] != "hf",
            "it compiles the decode loop of generation.backend=hf only (vLLM compiles its own unless "
            "generation.vllm.enforce_eager=true)", False),
    Ignored(("kl.track",), lambda c: not _offline(c) and _kl_used(c) and not c["kl"]["track"],
            "the KL enters the loss or the reward (or drives kl=adaptive), so it is measured at every step anyway",
            False),
    Ignored(("train.keep_checkpoints",), lambda c: c["train"]["checkpoint_every"] == 0,
            "train.checkpoint_every=0 writes no checkpoints", False),
]


def _check_values_the_options_ignore(c: dict) -> None:
    """Ignored settings that show in their values (whoever set them: command line, sweep or yaml)."""
    kl, train = c["kl"], c["train"]
    if kl["controller"] == "none" and not _offline(c):   # offline runs: a warning (see IGNORED)
        if kl["kl_coef"] != 0:
            raise ConfigError(f"kl.kl_coef must be 0 with kl=none (kl=none has no KL penalty: for one, use kl=fixed "
                              f"or kl=adaptive with kl.kl_coef=<x>), got {kl['kl_coef']!r}.")
        if kl["in_reward"] is not None:
            raise ConfigError(f"kl.in_reward={kl['in_reward']} has no effect with kl=none (no KL penalty to place); "
                              f"use kl=fixed or kl=adaptive, or drop it.")
    if train["warmup_steps"] > 0 and train["lr_schedule"] == "constant":
        raise ConfigError(f"train.warmup_steps={train['warmup_steps']} has no effect with train.lr_schedule="
                          f"constant (transformers' constant schedule has no warm-up); use "
                          f"train.lr_schedule=constant_with_warmup.")


def user_keys(overrides: Optional[list[str]]) -> dict[str, object]:
    """``key -> value`` of the settings an override list sets (not group selections, not deletions)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not overrides:
        return {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return {}
    out: dict[str, object] = {}
    for o in parsed:
        key = o.key_or_group
        if o.package is not None or "/" in key or o.is_delete() or "." not in key and key in config_groups():
            continue
        out[key] = o.get_value_element_as_str() if o.is_sweep_override() else o.value()
    return out


def _task_overrides() -> Optional[list[str]]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _warn(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per process under torchrun
        print(f"[rlhf_exp] warning: {message}", file=sys.stderr, flush=True)


def check_ignored(c: dict, overrides: Optional[list[str]]) -> list[str]:
    """Refuse (or warn about: returned) the settings of ``overrides`` that the chosen options ignore."""
    warnings = []
    given = user_keys(overrides)
    for rule in IGNORED:
        hits = [k for k in given if any(fnmatch.fnmatchcase(k, p) for p in rule.keys)]
        if not hits or not rule.when(c):
            continue
        for key in hits:
            value = OmegaConf.select(OmegaConf.create(c), key, default=given[key])
            message = f"{key}={value} has no effect here: {rule.why}."
            if rule.refuse:
                raise ConfigError(message + " Drop it (or change the option that ignores it).")
            warnings.append(message)
    return warnings


# --------------------------------------------------------------------------------------- the entry
def validate(cfg: DictConfig, overrides: Optional[list[str]] = None) -> list[str]:
    """Fail early, with the key, the value and the valid range named (a ``ConfigError``), on settings that could
    only fail minutes into a run or, worse, run to the end doing nothing: keys the schema does not declare, wrong
    types, values out of range, settings that contradict each other, settings the chosen options ignore.

    ``overrides``: the command-line overrides (default: Hydra's, inside ``python -m rlhf_exp``), for the ignored
    settings. Returns the warnings printed (settings that change only speed, memory or logging, and do nothing)."""
    c = resolved(cfg)
    _check_schema(c)
    _check_objective(cfg)
    _check_generation(c)
    _check_precision(c)
    _check_reward_kwargs(c)
    _check_backend(c)
    _check_values_the_options_ignore(c)
    warnings = check_ignored(c, _task_overrides() if overrides is None else overrides)
    for w in warnings:
        _warn(w)
    return warnings
