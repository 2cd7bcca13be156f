"""``check_overrides``: command-line overrides of keys that do not exist, refused before Hydra composes, with the
closest key named (Hydra's own advice for a typo, ``+key=value``, would add a stray key or run the default)."""
from __future__ import annotations

import functools
from typing import Any, Optional

from rlhf_exp.config.errors import ConfigError, closest
from rlhf_exp.config.paths import CONFIG_DIR, config_groups, group_options
from rlhf_exp.config.validation import unknown_top_key_error


def check_overrides(overrides: list[str]) -> None:
    """Reject command-line overrides of keys that no yaml declares, ``+`` or not, before Hydra composes.

    Top-level settings (``train.stepz``) are checked against the schema; a plain override inside a config group
    (``reward_model.parts.lenght.weight=0.2``, ``kl.target=3`` with ``kl=fixed``) against the config the group
    selections compose to, naming the closest key or the options that have it. Keys added with ``+`` inside a group
    are checked after composition by :func:`~rlhf_exp.config.validate`. Group selections with a package or a path
    (``hydra/launcher=slurm``, ``reward_model@reward_model.parts.x=vader``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - a syntax error: Hydra reports it with its own message
        return
    groups, in_group = config_groups(), []
    for o in parsed:
        key = o.key_or_group
        if o.package is not None or "/" in key:
            continue
        top = key.split(".", 1)[0]
        if top in groups:
            if "." in key and not (o.is_add() or o.is_force_add() or o.is_delete()):
                in_group.append(o)
            continue
        error = unknown_top_key_error(key)
        if error is not None:
            raise error
    if in_group:
        _check_group_keys(parsed, in_group)


def _compose(overrides: list[str]):
    """The config (with Hydra's runtime choices) that ``overrides`` compose to, or None when they do not compose
    (Hydra then reports why itself)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return None      # inside a running Hydra app (a test harness): do not disturb it
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception:  # noqa: BLE001
        return None


def _check_group_keys(parsed: list, plain: list) -> None:
    from omegaconf import OmegaConf, open_dict

    plain_ids = {id(o) for o in plain}
    rest = [o for o in parsed if id(o) not in plain_ids and o.key_or_group.split(".", 1)[0] in config_groups()]
    if any(o.is_sweep_override() for o in rest):
        return           # group selections swept over several options: each job's keys differ; Hydra checks them
    keep = [o.input_line for o in rest]
    cfg = _compose(keep)
    if cfg is None:
        return
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    for o in plain:
        error = _missing_key_error(cfg, o.key_or_group, choices, o)
        if error is not None:
            raise error
        if not o.is_sweep_override() and isinstance(o.value(), (dict, list)):
            with open_dict(cfg):   # a later override may go inside the mapping this one sets
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False, force_add=True)


def _missing_key_error(cfg, key: str, choices: dict, o) -> Optional[ConfigError]:
    from omegaconf import OmegaConf

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not OmegaConf.is_dict(node):
            return None      # inside a list or a value: Hydra says what is wrong
        if part in node:
            node = node._get_node(part)  # noqa: SLF001 - the node itself, interpolations unresolved
            continue
        parent = ".".join(parts[:i])
        known = [str(k) for k in node.keys()]
        return ConfigError(_message(key, parent, part, known, choices, o))
    return None


def _message(key: str, parent: str, part: str, known: list[str], choices: dict, o) -> str:
    group = key.split(".", 1)[0]
    value = o.get_value_element_as_str() if o.is_sweep_override() else _as_text(o.value())
    chosen = f"{group}={choices.get(group)}"
    head = f"Unknown config key {key!r}: {chosen if parent == group else parent} has no {part!r}"
    guess = closest(part, known)
    if guess:
        fixed = ".".join([parent, guess] + key.split(".")[len(parent.split(".")) + 1:])
        return f"{head}. Did you mean {guess} ({fixed}={value})?"
    if parent == group:   # a setting of other options of the group (kl.target with kl=fixed), or a typo of one
        others = {opt: _keys_of(group, opt) for opt in group_options(group) if opt != choices.get(group)}
        owners = [opt for opt, keys in others.items() if part in keys]
        if owners:
            return (f"{head}: {part} is a setting of {' | '.join(f'{group}={x}' for x in owners)}, which the chosen "
                    f"option has no use for. Pick one of those, or drop {key}.")
        guess = closest(part, sorted({k for keys in others.values() for k in keys}))
        if guess:
            owners = [opt for opt, keys in others.items() if guess in keys]
            return (f"{head}. Did you mean {guess}? It is a setting of {' | '.join(f'{group}={x}' for x in owners)}, "
                    f"not of {chosen}.")
    head += f" (it has: {', '.join(known) or 'nothing'})"
    if free_mapping(parent):
        return f"{head}. To add a new entry write +{key}={value}."
    return f"{head}."


def free_mapping(path: str) -> bool:
    """Whether ``path`` holds a mapping whose keys are the user's to choose (``reward_model.parts``,
    ``reward_model.kwargs``, ``dataset.data_files``): there a new key is added with ``+``."""
    return path.rsplit(".", 1)[-1] in ("parts", "kwargs", "data_files")


@functools.lru_cache(maxsize=None)
def _keys_of(group: str, option: str) -> frozenset:
    """The settings of ``group=option`` (composed: options build on others and on _global_ files)."""
    cfg = _compose([f"{group}={option}"])
    return frozenset(str(k) for k in cfg[group].keys()) if cfg is not None else frozenset()


def _as_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)
