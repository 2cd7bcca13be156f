"""The confound check: every resolved config key and every part of the recorded environment that differs between
the compared runs, other than what the comparison is about (the swept keys) and the seed.

A key whose values differ only because the swept choices set them (``objective=grpo`` sets ``train.epochs: 1``,
``kl=adaptive`` takes the objective's ``adaptive_kl_coef``) is not a confound: the config each run's swept values
give, on top of the overrides every run shares, is composed from conf/ with Hydra, and a key whose resolved value
is what that composition gives in every run follows from the sweep. Every other difference is a confound.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from rlhf_exp.compare.runs import SEED_KEY, RunRecord, _fmt_value, _parse_overrides

# Resolved keys that never change a run's results: bookkeeping, logging, checkpointing, display.
IGNORED_PREFIXES = ("run_name", "logger", "hydra", "sweep", "train.resume", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.save_model", "eval.num_samples_to_log")
ABSENT = "(absent)"


@dataclass
class Difference:
    """One key that differs: its values, each with the runs that have it."""

    key: str
    values: dict[str, list[str]]          # value -> run names
    within_group: bool = False            # it differs between runs of one group (seeds of the same setting)

    def describe(self, limit: int = 4) -> str:
        parts = []
        for value, names in self.values.items():
            shown = ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "")
            parts.append(f"{value} ({shown})")
        return f"{self.key}: " + "; ".join(parts)


@dataclass
class ConfoundReport:
    config: list[Difference] = field(default_factory=list)        # confounds in the resolved config
    explained: list[Difference] = field(default_factory=list)     # set by the swept choices (for the record)
    environment: list[Difference] = field(default_factory=list)   # confounds in the recorded environment
    notes: list[str] = field(default_factory=list)                # what could not be checked, and why

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.config]

    def warnings(self) -> list[str]:
        """One line per confound, for the terminal and the report."""
        lines = [f"config {d.describe()}" + ("  <- differs between seeds of one setting" if d.within_group else "")
                 for d in self.config]
        lines += [f"environment {d.describe()}" for d in self.environment]
        return lines


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train.batch_size": "16", ...}``: every leaf of a nested config as text (lists whole)."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = _fmt_value(v) if not isinstance(v, (list, tuple)) else str([_fmt_value(x) for x in v])
    return out


def _ignored(key: str) -> bool:
    return key == SEED_KEY or any(key == p or key.startswith(p + ".") for p in IGNORED_PREFIXES)


def _differences(flat: Mapping[str, Mapping[str, str]], runs: Sequence[RunRecord]) -> dict[str, dict[str, list[str]]]:
    keys = sorted({k for f in flat.values() for k in f})
    out = {}
    for key in keys:
        values: dict[str, list[str]] = {}
        for r in runs:
            values.setdefault(flat[r.name].get(key, ABSENT), []).append(r.name)
        if len(values) > 1:
            out[key] = values
    return out


def expected_configs(runs: Sequence[RunRecord], swept: Sequence[str]) -> tuple[Optional[dict[str, dict]], str]:
    """For each run, the resolved config that its swept values give on top of the overrides all the runs share,
    composed from this checkout's conf/ (``{run name: nested config}``), and a note; None and the reason when it
    cannot be composed (a key this version does not know)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rlhf_exp.config import CONFIG_DIR

    parsed = [_parse_overrides(r.overrides) for r in runs]
    common = [f"{k}={v}" for k, v in parsed[0].items()
              if k not in swept and k != SEED_KEY and all(p.get(k) == v for p in parsed[1:])] if parsed else []
    wanted: dict[tuple[str, ...], list[str]] = {}
    for r in runs:
        own = [f"{k}={r.param(k)}" for k in swept if k != SEED_KEY and r.param(k) != "?"]
        wanted.setdefault(tuple(common + own), []).append(r.name)
    out: dict[str, dict] = {}
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for overrides, names in wanted.items():
                cfg = compose(config_name="config", overrides=list(overrides))
                container = OmegaConf.to_container(cfg, resolve=True)
                out.update({n: container for n in names})
    except Exception as e:  # noqa: BLE001 - Hydra's errors for keys, groups or values this checkout lacks
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, (f"could not compose the configs the sweep implies from {CONFIG_DIR} ({first}): every "
                      f"differing key is listed as a confound")
    return out, f"composed {len(wanted)} config(s) from {CONFIG_DIR}"


def check(runs: Sequence[RunRecord], swept: Sequence[str], groups: Mapping[str, str]) -> ConfoundReport:
    """The confounds among ``runs`` (finished runs with a resolved config; ``groups``: run name -> its group
    label over the swept keys). Keys under a swept key (``objective.*`` when ``objective`` is swept) and keys the
    swept choices set (:func:`expected_configs`) are not confounds."""
    report = ConfoundReport()
    with_config = [r for r in runs if r.config]
    if len(with_config) < len(runs):
        report.notes.append(f"{len(runs) - len(with_config)} run(s) have no resolved config "
                            f"(config_resolved.yaml): not checked ("
                            f"{', '.join(r.name for r in runs if not r.config)[:200]})")
    if len(with_config) > 1:
        flat = {r.name: {k: v for k, v in flatten(r.config).items() if not _ignored(k)} for r in with_config}
        expected, note = expected_configs(with_config, swept)
        report.notes.append(note)
        flat_expected = {n: flatten(c) for n, c in expected.items()} if expected else None
        for key, values in _differences(flat, with_config).items():
            if any(key == s or key.startswith(s + ".") for s in swept):
                continue
            within = any(len({flat[r.name].get(key, ABSENT) for r in with_config if groups.get(r.name) == g}) > 1
                         for g in set(groups.values()))
            diff = Difference(key, values, within_group=within)
            follows = flat_expected is not None and not within and all(
                flat_expected[r.name].get(key, ABSENT) == flat[r.name].get(key, ABSENT) for r in with_config)
            (report.explained if follows else report.config).append(diff)
    with_env = [r for r in runs if r.environment]
    if len(with_env) < len(runs):
        report.notes.append(f"{len(runs) - len(with_env)} run(s) record no environment in summary.json (written "
                            f"before it was recorded): their versions are not checked")
    if len(with_env) > 1:
        flat_env = {r.name: flatten(r.environment) for r in with_env}
        for key, values in _differences(flat_env, with_env).items():
            report.environment.append(Difference(key, values))
    return report


def environment_summary(runs: Sequence[RunRecord]) -> list[tuple[str, str, int]]:
    """``[(key, value, number of runs), ...]``: the recorded environment, each key with its most common value."""
    counts: dict[str, Counter] = {}
    for r in runs:
        for k, v in flatten(r.environment).items():
            counts.setdefault(k, Counter())[v] += 1
    return [(k, c.most_common(1)[0][0], c.most_common(1)[0][1]) for k, c in sorted(counts.items())]
