"""Where the configs live, the ``${asset:...}`` resolver, and checks of a composed config before anything loads."""
from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CONFIG_DIR = Path(os.environ.get("RLHF_EXP_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))



def resolve_asset(relative: str) -> str:
    """Path of a file or folder shipped in ``rlhf_exp/assets`` (the OmegaConf resolver ``${asset:...}``)."""
    return str(ASSETS_DIR / relative)


def path_safe(text: str, max_len: int = 150) -> str:
    """``text`` as one readable path component: characters other than letters, digits and ``._=,+-`` become ``_``;
    past ``max_len`` characters it is cut and ends with 8 hex digits of its hash, so distinct texts stay distinct."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", str(text))
    if len(safe) > max_len:
        digest = hashlib.sha1(str(text).encode()).hexdigest()[:8]
        safe = f"{safe[:max_len - 9]}_{digest}"
    return safe


def job_dirname(head, overrides: str) -> str:
    """The name of a run folder (the ``${job_dirname:...}`` resolver of ``hydra.run.dir``/``hydra.sweep.subdir``):
    ``head`` (a job number, zero-padded to 3 digits, or a time) then ``_`` and the command-line overrides, e.g.
    ``003_kl.kl_coef=0.1,seed=0``; just ``head`` when there are no overrides."""
    head = f"{head:03d}" if isinstance(head, int) else str(head)
    return f"{head}_{path_safe(overrides)}" if overrides else head


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", resolve_asset)
if not OmegaConf.has_resolver("job_dirname"):
    OmegaConf.register_new_resolver("job_dirname", job_dirname)

ONLINE, OFFLINE = "online", "offline"


class ConfigError(ValueError):
    """A setting that cannot work, found before anything loads or any file is written. The message names the key
    and the fix; ``python -m rlhf_exp`` prints it as one line, without a traceback."""


# ------------------------------------------------------------------------------------- the declared config structure
def config_groups() -> list[str]:
    """The config groups a user picks from (``conf/<group>/``), without Hydra's own."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def group_options(group: str) -> list[str]:
    """The options of one config group: the yaml files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _global_yamls() -> list[Path]:
    """``conf/config.yaml`` and every group option that writes at the top level (``# @package _global_``)."""
    files = [CONFIG_DIR / "config.yaml"]
    for group in config_groups():
        files += [p for p in sorted((CONFIG_DIR / group).glob("*.yaml"))
                  if p.read_text().lstrip().startswith("# @package _global_")]
    return files


@functools.lru_cache(maxsize=None)
def declared_settings() -> dict:
    """The run settings as the yaml files declare them: every top-level key of ``conf/config.yaml`` and of the
    ``_global_`` group options (``seed``, ``train``, ``generation``, ...), except the config groups themselves,
    ``defaults`` and ``hydra``; with ``conf/config.yaml``'s values first (its defaults give the expected types).
    Read once per process (do not modify the returned dict)."""
    groups = set(config_groups())
    merged: dict = {}
    for path in reversed(_global_yamls()):  # config.yaml last, so its values win
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for key, value in raw.items():
            if key in ("defaults", "hydra") or key in groups:
                continue
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def _flat_keys(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be (a typo), or None."""
    import difflib

    hit = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return hit[0] if hit else None


def _unknown_key_error(key: str) -> ConfigError | None:
    """The error for a config key that no yaml declares (``objectiv``, ``train.stepz``), with the closest known
    group or key; None when the key is known, inside a config group (``objective.*``, checked by Hydra and the
    group's code), or Hydra's own (``hydra.*``)."""
    groups, settings = config_groups(), declared_settings()
    top = key.split(".", 1)[0]
    if top == "hydra" or top in groups:
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
    flat = _flat_keys(settings)
    if "." in key and key not in flat and not any(k.startswith(key + ".") for k in flat):
        parent = top if isinstance(settings[top], dict) else None
        siblings = [k for k in flat if parent and k.startswith(parent + ".")]
        guess = closest(key, siblings)
        hint = f" Did you mean {guess}?" if guess else f" Known keys: {', '.join(s.split('.', 1)[1] for s in siblings)}."
        return ConfigError(f"Unknown config key {key!r}: conf/config.yaml has no such setting.{hint}")
    return None


def check_overrides(overrides: list[str]) -> None:
    """Reject command-line overrides of keys that no yaml declares, ``+`` or not, before Hydra composes (Hydra's own
    advice for a typo'd group, ``+objectiv=ppo``, would run the default with a stray key). Group selections with a
    package or a path (``hydra/launcher=slurm``, ``reward_model@reward_model.parts.x=vader``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # a syntax error: Hydra reports it with its own message
        return
    for o in parsed:
        key = o.key_or_group
        if o.package is not None or "/" in key:
            continue
        error = _unknown_key_error(key)
        if error is not None:
            raise error


# ------------------------------------------------------------------------------------------------- value checks
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _expected_type(default):
    for t in (bool, int, float, str, list):
        if isinstance(default, t):
            return t
    return None


def _type_ok(value, expected) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return _is_int(value)
    if expected is float:
        return _is_number(value)
    if expected is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)


def _describe(value) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


# Ranges of the run settings: (key, test of a value of the right type, what is required and why). One row per key;
# a key that is absent from the composed config (an older config file) is skipped.
RANGE_RULES: list[tuple[str, object, str]] = [
    ("train.steps", lambda v: v >= 0, ">= 0 (0 = evaluate only)"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.mini_batch_size", lambda v: v >= 1, ">= 1"),
    ("train.micro_batch_size", lambda v: v >= 1, ">= 1 or null (null = mini_batch_size: no accumulation)"),
    ("train.epochs", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v >= 0, ">= 0 (0 = no checkpoints)"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1 or null (null = keep all)"),
    ("train.forward_batch_size", lambda v: v >= 1, ">= 1"),
    ("train.lr", lambda v: v > 0, "> 0"),
    ("train.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.adam_eps", lambda v: v > 0, "> 0"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.adamw_impl", lambda v: v in ("foreach", "fused", "for-loop"), "one of foreach, fused, for-loop"),
    ("train.max_grad_norm", lambda v: v > 0,
     "> 0 (gradients are always clipped to this norm, and 0 would clip every update to nothing; for no clipping "
     "use a large value such as 1e9)"),
    ("train.mixed_precision", lambda v: v in ("no", "bf16", "fp16"), "one of no, bf16, fp16"),
    ("device", lambda v: v in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda"),
    ("generation.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("generation.min_new_tokens", lambda v: v >= 1, ">= 1"),
    ("generation.temperature", lambda v: v > 0,
     "> 0 (training rollouts always sample; for greedy evaluation set eval.do_sample=false)"),
    ("generation.top_k", lambda v: v >= 0, ">= 0 (0 = off)"),
    ("generation.top_p", lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    ("generation.backend", lambda v: v in ("hf", "vllm"),
     "one of hf, vllm (hf: transformers generate; vllm: a colocated vLLM engine, docs/rollout.md)"),
    ("generation.vllm.gpu_memory_utilization", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("generation.vllm.kv_cache_gb", lambda v: _is_number(v) and v > 0,
     "> 0 or null (null = gpu_memory_utilization's share on GPU, 1 GiB on CPU)"),
    ("generation.vllm.tensor_parallel_size", lambda v: v == 1,
     "1: each training process holds its own whole engine (TRL's colocate mode shards one engine over a group of "
     "training processes; that is not implemented here, docs/rollout.md)"),
    ("generation.vllm.max_model_len", lambda v: _is_int(v) and v >= 1,
     "an integer >= 1 or null (null = the model's position limit)"),
    ("generation.vllm.dtype", lambda v: v in ("auto", "float32", "bfloat16", "float16"),
     "one of auto, float32, bfloat16, float16 (auto = model.dtype)"),
    ("generation.vllm.importance_cap", lambda v: v >= 1,
     ">= 1 (importance weights are min(pi_old / pi_vllm, cap); verl and OpenRLHF use 2)"),
    ("eval.every", lambda v: v >= 0, ">= 0 (0 = only at the start and the end)"),
    ("eval.batch_size", lambda v: v >= 1, ">= 1"),
    ("eval.num_samples_to_log", lambda v: v >= 0, ">= 0"),
    ("reward.scale", lambda v: v != 0, "non-zero (0 would make every reward 0)"),
    ("reward.clip", lambda v: v > 0, "> 0 or null (rewards are clipped to [-clip, clip]; null = no clipping)"),
]


# Settings whose values are of more than one type (``train.resume``: auto | false | a path).
MIXED_TYPE_KEYS = {"train.resume"}


def _check_types(cfg: DictConfig) -> None:
    """Each run setting has the type of its default in conf/config.yaml (``train.steps=1.5`` or ``=abc`` is an
    error naming the key and the type); settings whose default is null take any value."""
    defaults = _flat_keys(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"), resolve=False))
    for key, default in defaults.items():
        if key.startswith(("defaults", "hydra.")) or key == "defaults" or key in MIXED_TYPE_KEYS:
            continue
        expected = _expected_type(default)
        if expected is None or (isinstance(default, str) and default.startswith("${")):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or OmegaConf.is_config(value) and expected is not list:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not _type_ok(value, expected):
            raise ConfigError(f"{key} must be {_TYPE_NAMES[expected]}, got {_describe(value)} "
                              f"(conf/config.yaml default: {default!r}).")


def _check_ranges(cfg: DictConfig) -> None:
    for key, ok, requirement in RANGE_RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if not ok(value):
            raise ConfigError(f"{key} must be {requirement}, got {value!r}.")


def _check_precision(cfg: DictConfig) -> None:
    import torch

    if str(cfg.train.get("mixed_precision", "no")) != "fp16":
        return
    device = str(cfg.get("device", "auto"))
    if device == "cpu" or not torch.cuda.is_available():
        where = "device=cpu" if device == "cpu" else "no CUDA device is visible"
        raise ConfigError(f"train.mixed_precision=fp16 needs a CUDA GPU ({where}); on CPU use "
                          f"train.mixed_precision=bf16 or no.")


def _function_rewards(rm, option: str):
    """``(option, config)`` of every ``kind: function`` reward in ``reward_model`` and its composite parts."""
    if rm is None or not OmegaConf.is_dict(rm):
        return
    if rm.get("kind") == "function":
        yield option, rm
    for name, part in (rm.get("parts") or {}).items():
        yield from _function_rewards(part, f"{option}.parts.{name}")


def _check_reward_kwargs(cfg: DictConfig) -> None:
    """The ``kwargs`` of a shipped reward function (``fn: target_length``...) must be arguments it names: they take
    ``**kwargs`` for the dataset columns, so a misspelled one would be swallowed silently."""
    import inspect

    from rlhf_exp.rewards import functions

    loop_arguments = {"prompts", "completions", "completion_ids"}
    for option, rm in _function_rewards(cfg.get("reward_model"), "reward_model"):
        fn = str(rm.get("fn") or "")
        if ":" in fn or "." in fn or not callable(getattr(functions, fn, None)):
            continue
        params = inspect.signature(getattr(functions, fn)).parameters
        known = sorted(n for n, p in params.items()
                       if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in loop_arguments)
        for name in (rm.get("kwargs") or {}):
            if name not in known:
                guess = closest(str(name), known)
                hint = f" Did you mean {guess}?" if guess else ""
                raise ConfigError(f"{option}.kwargs.{name}: {fn} takes no argument {name!r} (its arguments: "
                                  f"{', '.join(known) or 'none'}).{hint}")


def _check_unknown_keys(cfg: DictConfig) -> None:
    groups = set(config_groups())
    flat = _flat_keys(declared_settings())
    for key in cfg.keys():
        key = str(key)
        if key in groups:
            continue
        error = _unknown_key_error(key)
        if error is None and OmegaConf.is_dict(cfg[key]):
            for sub in _flat_keys(OmegaConf.to_container(cfg[key], resolve=False), f"{key}."):
                if sub not in flat and not any(k.startswith(sub + ".") for k in flat):
                    error = _unknown_key_error(sub)
                    if error is not None:
                        break
        if error is not None:
            raise error


def validate(cfg: DictConfig) -> None:
    """Fail early, with the key and the fix named (a ``ConfigError``), on settings that could only fail minutes into
    a run or, worse, run to the end doing nothing: keys no yaml declares, wrong types, values out of range, fp16 on
    CPU, unknown arguments of the shipped reward functions."""
    _check_unknown_keys(cfg)
    _check_types(cfg)
    _check_ranges(cfg)
    if cfg.objective.get("kind") not in (ONLINE, OFFLINE):
        raise ConfigError(f"objective.kind must be 'online' or 'offline', got {cfg.objective.get('kind')!r} "
                          f"in objective={cfg.objective.get('name')}.")
    from rlhf_exp.objectives import ObjectiveConfigError, validate_objective

    try:
        validate_objective(cfg.objective)   # every setting its estimator, loss and hooks declare (docs/objectives.md)
    except ObjectiveConfigError as e:
        raise ConfigError(str(e)) from None
    g = cfg.generation
    if int(g.min_new_tokens) > int(g.max_new_tokens):
        raise ConfigError(f"generation.min_new_tokens ({g.min_new_tokens}) must be <= generation.max_new_tokens "
                          f"({g.max_new_tokens}).")
    _check_precision(cfg)
    _check_reward_kwargs(cfg)
    _check_backend(cfg)


def _check_backend(cfg: DictConfig) -> None:
    """``generation.vllm.importance_correction`` corrects the gap between a separate sampler and the trainer:
    only ``generation.backend=vllm`` has one."""
    g = cfg.get("generation") or {}
    if g.get("backend") == "vllm":
        from rlhf_exp.rollout.vllm_engine import INSTALL_HINT, vllm_available

        if not vllm_available():
            raise ConfigError(f"{INSTALL_HINT} (vllm is not installed in {sys.prefix}).")
    if (g.get("vllm") or {}).get("importance_correction") and g.get("backend", "hf") != "vllm":
        raise ConfigError(f"generation.vllm.importance_correction=true needs generation.backend=vllm (with "
                          f"generation.backend={g.get('backend')} the sampler is the trained model itself: there is "
                          f"no sampler/trainer gap to correct).")
