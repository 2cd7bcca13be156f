"""Loading runs for ``compare``: run folders (summary.json, metrics.jsonl, the resolved config, Hydra's overrides)
and W&B runs (public API), as :class:`RunRecord`."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

FINISHED = "finished"
SEED_KEY = "seed"
EVAL_KEYS = ("eval/reward_mean", "eval/kl")
GROUP_KEYS = ("objective", "kl")  # shown as their own columns
NOT_COMPARED = ("sweep", "run_name", "logger", "device", "hydra")  # overrides that do not change the experiment


@dataclass
class RunRecord:
    """What ``compare`` knows of one run, read from its folder or from W&B.

    ``params``: the run's overrides ``{key: value-as-text}`` (``objective``, ``kl``, ``kl.kl_coef``, ``seed`` ...).
    ``config``: its resolved config (nested dict), to look up keys another run overrode and this one did not.
    ``history``: ``{metric: [(step, value), ...]}`` of the eval metrics and ``perf/samples_per_s``.
    """

    name: str
    source: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def param(self, key: str) -> str:
        """The value of an override key for this run; when this run did not override it, its config value
        (a config group's choice through ``<group>.name``/``.controller``); ``"?"`` when unknown."""
        if key in self.params:
            return self.params[key]
        node: Any = self.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):  # a config group: its option's name
            node = node.get("name", node.get("controller"))
        return "?" if node is None else _fmt_value(node)

    @property
    def objective(self) -> str:
        return str(self.summary.get("objective") or self.param("objective"))

    @property
    def kl(self) -> str:
        return str(self.summary.get("kl_controller") or self.param("kl"))


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# ------------------------------------------------------------------------------------------------- local runs
def _is_run_dir(p: Path) -> bool:
    return any((p / f).exists() for f in ("summary.json", "metrics.jsonl", "config_resolved.yaml",
                                          ".hydra/overrides.yaml"))


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders in ``paths``: each path that is a run folder, and every run folder below the others (a
    Hydra multirun folder, ``outputs/``...), in sorted order. Raises when a path does not exist or holds no run."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a folder: pass run folders or sweep folders (multirun/<date>/<time>).")
        if _is_run_dir(p):
            found.append(p)
            continue
        below = []
        for root, dirs, _files in os.walk(p):
            r = Path(root)
            if _is_run_dir(r):
                below.append(r)
                dirs[:] = []  # a run's own subfolders (policy/, wandb/) are not runs
            else:
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not below:
            raise FileNotFoundError(f"No run folder (one with summary.json, metrics.jsonl or .hydra/) under {p}.")
        found += sorted(below)
    return found


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.exists():
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed run
                continue
    return rows


def _history(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    hist: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    for row in rows:
        step = row.get("step", row.get("_step"))
        for k in keys:
            v = row.get(k)
            if step is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                hist[k].append((int(step), float(v)))
    return {k: v for k, v in hist.items() if v}


def _parse_overrides(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        item = str(item)
        if "=" not in item or item.startswith("~"):
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+")] = value
    return out


def short_names(dirs: Sequence[Path]) -> list[str]:
    """Display names of run folders: the path below their common parent, with each Hydra-made folder name cut to
    its job number or time (``003_kl.kl_coef=0.1`` -> ``003``; the overrides are columns of their own)."""
    resolved = [Path(d).resolve() for d in dirs]
    parent = Path(os.path.commonpath(resolved)) if resolved else Path(".")
    if len(resolved) == 1:
        parent = resolved[0].parent
    names = []
    for d in resolved:
        parts = [re.sub(r"^(\d+|\d\d-\d\d-\d\d)_.*$", r"\1", part) for part in d.relative_to(parent).parts]
        names.append("/".join(parts) or d.name)
    return names if len(set(names)) == len(names) else [str(d.relative_to(parent)) or d.name for d in resolved]


def load_run_dir(path: Path, name: Optional[str] = None) -> RunRecord:
    """A run from its folder: ``summary.json``, ``metrics.jsonl``, ``config_resolved.yaml`` (or ``.hydra/config.yaml``)
    and the overrides in ``.hydra/overrides.yaml`` (with the config groups' choices from ``.hydra/hydra.yaml``)."""
    from omegaconf import OmegaConf

    path = Path(path)
    summary: dict[str, Any] = {}
    if (path / "summary.json").exists():
        try:
            summary = dict(json.loads((path / "summary.json").read_text()))
            status = str(summary.get("status", FINISHED))
        except (OSError, ValueError, TypeError) as e:   # cut short or garbled: name it, leave the run out
            summary, status = {}, f"unreadable summary.json ({type(e).__name__}: {e})"
            print(f"[compare] skipping {path}: its summary.json is unreadable ({type(e).__name__}: {e}).",
                  file=sys.stderr)
    elif (path / "metrics.jsonl").exists():
        status = "no summary (still running, or killed)"
    else:
        status = "no summary (did not start)"
    config: dict[str, Any] = {}
    for cfg_file in ("config_resolved.yaml", ".hydra/config.yaml"):
        if (path / cfg_file).exists():
            try:
                config = OmegaConf.to_container(OmegaConf.load(path / cfg_file), resolve=False)
            except Exception:  # an unreadable config only costs the fallback lookups
                config = {}
            break
    params: dict[str, str] = {}
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    try:
        if hydra_yaml.exists():
            choices = OmegaConf.load(hydra_yaml).hydra.runtime.get("choices") or {}
            params.update({k: str(v) for k, v in choices.items() if not k.startswith("hydra/") and v is not None})
        if (path / ".hydra" / "overrides.yaml").exists():
            params.update(_parse_overrides(OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "overrides.yaml"))))
    except Exception as e:  # noqa: BLE001 - any parse error of a damaged file
        print(f"[compare] {path}/.hydra is unreadable ({type(e).__name__}); its overrides are not shown.",
              file=sys.stderr)
    history = _history(_read_jsonl(path / "metrics.jsonl"), EVAL_KEYS + ("perf/samples_per_s",))
    return RunRecord(name=name or path.name, source=str(path), status=status, params=params, config=config,
                     summary=summary, history=history)


# ------------------------------------------------------------------------------------------------- W&B runs
def record_from_wandb_run(run: Any) -> RunRecord:
    """A run from a ``wandb.apis.public.Run`` (public API: ``name``, ``state``, ``tags``, ``config``,
    ``summary_metrics``, ``scan_history``). Overrides come from the ``key=value`` tags that rlhf_exp gives every run;
    the status from the ``status`` rlhf_exp writes into the summary, else the W&B state."""
    summary = dict(run.summary_metrics or {})
    state = str(getattr(run, "state", "") or "")
    status = str(summary.get("status") or (FINISHED if state == "finished" else f"no summary (W&B state {state})"))
    history = _history(run.scan_history(keys=["_step", *EVAL_KEYS]), EVAL_KEYS)
    history.update(_history(run.scan_history(keys=["_step", "perf/samples_per_s"]), ("perf/samples_per_s",)))
    return RunRecord(name=str(run.name), source=str(getattr(run, "url", "") or run.name), status=status,
                     params=_parse_overrides(run.tags or []), config=dict(run.config or {}), summary=summary,
                     history=history)


def load_wandb_runs(path: str, group: Optional[str] = None, sweep: Optional[str] = None) -> list[RunRecord]:
    """The runs of W&B project ``entity/project``: of one group (a Hydra multirun) or of one W&B sweep when given,
    through ``wandb.Api`` (needs W&B credentials and network)."""
    import wandb

    api = wandb.Api()
    runs = api.sweep(f"{path}/{sweep}").runs if sweep else api.runs(path, filters={"group": group} if group else None)
    records = [record_from_wandb_run(r) for r in runs]
    if not records:
        what = f" with group {group!r}" if group else f" in sweep {sweep!r}" if sweep else ""
        raise LookupError(f"No W&B runs in {path}{what}.")
    return records

