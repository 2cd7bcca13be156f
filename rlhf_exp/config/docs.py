"""docs/config.md, generated from the schema (type, valid range, doc of every setting) and the yaml files (the
defaults): ``python -m rlhf_exp.config.docs > docs/config.md``. A test checks that the committed file is current."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Optional

from rlhf_exp.config.paths import CONFIG_DIR, config_groups, group_options
from rlhf_exp.config.schema import GROUPS, Run, range_text, settings_of
from rlhf_exp.config.validation import IGNORED

HEADER = """# Config reference

Every setting of `python -m rlhf_exp`: its default (from the yaml files in `conf/`, the one place defaults live),
the values it accepts and what it does. Generated from the schema (`rlhf_exp/config/schema.py`) and the yaml files
by `python -m rlhf_exp.config.docs > docs/config.md`; `tests/test_config.py` fails when this file is out of date.

Pick one option per config group and override any setting on the command line:
`python -m rlhf_exp objective=grpo kl=fixed kl.kl_coef=0.05 train.steps=50`.

## How settings are checked

Before any model loads or any file is written, `python -m rlhf_exp` checks the composed config against the
schema: a key that does not exist (with the closest one named), a value of the wrong type, or a value outside its
range stops the run with one line, `[rlhf_exp] error: <key> must be <range>, got <value>.`, exit code 2, and no
run folder. A key of the wrong option (`kl.target` with `kl=fixed`, `reward_model.label` with a function reward,
`logger.project` with `logger=none`) is refused with the options that have it.

A setting that the chosen options ignore is refused when the run would have come out differently had it applied
(you expect an effect on what is trained or measured). It is warned about (`[rlhf_exp] warning: ...`) when it would
only have changed speed, memory or logging, and when it belongs to the other kind of objective (online settings in
an offline run and the reverse): one command line often serves both, in a pipeline (`sweeps/pipeline.sh` passes its
arguments to every stage) or in a sweep over online and offline objectives. Those reported from the command line:

{ignored}

Also refused whatever sets them: `kl.kl_coef` other than 0 or `kl.in_reward` with `kl=none` in an online run;
`train.warmup_steps` with `train.lr_schedule=constant` (it has no warm-up); only one of `dataset.prompt_min_tokens`
and `dataset.prompt_max_tokens`.

A composite reward's part written inline (`+reward_model.parts.fmt={{kind: function, fn: regex_match, weight:
0.5}}`) takes the settings it leaves out from its kind's preset (the `reward_model` option named below for each kind).
"""


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value).replace("\n", "\\n")


def _fmt(value: Any) -> str:
    return "`" + _plain(value).replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flat_settings(block: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    for key, (f, tp) in settings_of(block).items():
        if dataclasses.is_dataclass(tp):
            yield from _flat_settings(tp, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", f, tp


def _select(tree: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


class _Composer:
    """Composes configs once inside one Hydra context; values are kept unresolved (``${asset:...}`` stays as
    written, so the file does not depend on where the package lives)."""

    def __enter__(self):
        from hydra import initialize_config_dir

        self._cache: dict[tuple, dict] = {}
        self._ctx = initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def __call__(self, overrides: list[str]) -> dict:
        from hydra import compose
        from omegaconf import OmegaConf

        key = tuple(overrides)
        if key not in self._cache:
            self._cache[key] = OmegaConf.to_container(compose(config_name="config", overrides=overrides),
                                                      resolve=False)
        return self._cache[key]


def _defaults_cell(values: dict[str, tuple[bool, Any]]) -> str:
    present = {opt: v for opt, (ok, v) in values.items() if ok}
    if not present:
        return "(absent)"
    distinct = {json.dumps(v, sort_keys=True, default=str) for v in present.values()}
    if len(distinct) == 1 and len(present) == len(values):
        return _fmt(next(iter(present.values())))
    return "; ".join(f"{opt}: {_fmt(v)}" for opt, v in present.items()) + (
        "; others: absent" if len(present) < len(values) else "")


def _doc(block: type) -> str:
    doc = (block.__doc__ or "").strip()
    return "" if doc.startswith(block.__name__ + "(") else doc    # dataclasses make up a docstring


def _table(block: type, values_of: dict[str, dict], path: str, selector: Optional[str] = None,
           kinds: tuple = ()) -> list[str]:
    rows = ["| key | default | valid values | what it does |", "|---|---|---|---|"]
    for key, f, tp in _flat_settings(block):
        values = {opt: _select(tree, key) for opt, tree in values_of.items()}
        doc = f.metadata["doc"] + (" (may be absent)" if f.metadata["absent_ok"] else "")
        valid = f"one of {', '.join(map(str, kinds))}" if key == selector else range_text(f, tp)
        rows.append(f"| `{path}.{key}` | {_defaults_cell(values)} | {_cell(valid)} | {_cell(doc)} |")
    return rows


def _run_section(compose: _Composer) -> list[str]:
    base = compose([])
    out = ["## Run settings (conf/config.yaml)", ""]
    changed: dict[str, list[str]] = {}
    for group in [g for g in config_groups() if g != "sweep"]:   # sweeps set Hydra's sweeper, not settings
        for option in group_options(group):
            cfg = compose([f"{group}={option}"])
            for key, _, _ in _flat_settings(Run):
                ok, value = _select(cfg, key)
                if ok and _select(base, key)[1] != value:
                    changed.setdefault(key, []).append(f"{group}={option}: {_fmt(value)}")
    for key, (f, tp) in settings_of(Run).items():
        if dataclasses.is_dataclass(tp):
            continue
        out.append(f"- `{key}`: {_fmt(base[key])}; {_cell(range_text(f, tp))}. {f.metadata['doc']}.")
    for key, (f, tp) in settings_of(Run).items():
        if not dataclasses.is_dataclass(tp):
            continue
        out += ["", f"### {key}", "", _doc(tp), ""]
        out += _table(tp, {"config.yaml": base[key]}, key)
        notes = [(k, v) for k, v in changed.items() if k.startswith(key + ".")]
        if notes:
            out += ["", "Options that change these defaults (the command line still wins):", ""]
            out += [f"- `{k}`: {'; '.join(v)}" for k, v in notes]
    return out


def _group_section(compose: _Composer, group: str) -> list[str]:
    g = GROUPS[group]
    composed = {opt: compose([f"{group}={opt}"])[group] for opt in group_options(group)}
    out = ["", f"## {group}", "", f"{g.doc[0].upper()}{g.doc[1:]}: `{group}=<option>`, one of "
           f"{', '.join(f'`{o}`' for o in composed)}." + (f" The options differ by `{group}.{g.selector}`."
                                                          if g.selector else "")]
    for kind, block in g.kinds.items():
        options = {o: c for o, c in composed.items() if g.selector is None or c.get(g.selector) == kind}
        title = f"{group}.{g.selector}={kind}" if g.selector else group
        intro = _doc(block)
        if getattr(block, "preset", ""):
            intro += f" Preset (the defaults of an inline composite part): `reward_model={block.preset}`."
        out += ["", f"### {title}", "", intro.strip(), "",
                f"Options: {', '.join(f'`{o}`' for o in options) or '(none shipped)'}.", ""]
        out += _table(block, options, group, g.selector, tuple(g.kinds))
        if block.open_keys:
            out += ["", "Each option's own parameters (checked by `rlhf_exp.objectives`):", ""]
            declared = set(settings_of(block))
            for opt, c in options.items():
                own = [f"`{k}: {_plain(v)}`" for k, v in c.items() if k not in declared]
                out.append(f"- `{opt}`: {', '.join(own) or '(none)'}")
    return out


def render() -> str:
    """The text of docs/config.md."""
    ignored = []
    for rule in IGNORED:
        keys = ", ".join(f"`{k}`" for k in rule.keys)
        ignored.append(f"- {keys}: {'refused' if rule.refuse else 'a warning'}: {rule.why}.")
    lines = [HEADER.format(ignored="\n".join(ignored)).rstrip(), ""]
    with _Composer() as compose:
        lines += _run_section(compose)
        for group in GROUPS:
            lines += _group_section(compose, group)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
