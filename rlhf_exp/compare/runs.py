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
# Further eval metrics compared when runs log them: a judge's score (eval/<judge>/reward_mean) and the win rate
# against the initial policy.
EXTRA_EVAL_PATTERN = re.compile(r"^eval/(?!reward/)[^/]+/reward_mean$|^eval/win_rate$")
# Cumulative budgets, logged by the training loop at every step (docs/compare.md): --x samples|tokens|flops|time.
BUDGET_KEYS = ("budget/samples", "budget/tokens", "budget/flops", "budget/wall_s")
GROUP_KEYS = ("objective", "kl")  # shown as their own columns
NOT_COMPARED = ("sweep", "run_name", "logger", "device", "hydra")  # overrides that do not change the experiment


@dataclass
class RunRecord:
    """What ``compare`` knows of one run, read from its folder or from W&B.

    ``params``: the run's overrides ``{key: value-as-text}`` (``objective``, ``kl``, ``kl.kl_coef``, ``seed`` ...).
    ``config``: its resolved config (nested dict), to look up keys another run overrode and this one did not.
    ``history``: ``{metric: [(step, value), ...]}`` of the eval metrics, ``perf/samples_per_s`` and the budgets.
    ``overrides``: the command-line overrides as given (``.hydra/overrides.yaml``; from W&B: the ``key=value`` tags).
    ``sweep``: the run's sweep when it is a job of one: ``{"dir", "overrides", "swept"}`` (:func:`sweep_definition`).
    """

    name: str
    source: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    sweep: Optional[dict[str, Any]] = None

    @property
    def environment(self) -> dict[str, Any]:
        """The environment the run recorded in ``summary.json`` (``{}`` for a run from before it was recorded)."""
        env = self.summary.get("environment")
        return dict(env) if isinstance(env, Mapping) else {}

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


HISTORY_KEYS = EVAL_KEYS + ("perf/samples_per_s",) + BUDGET_KEYS


def _history_keys(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    extra = sorted({k for row in rows for k in row if EXTRA_EVAL_PATTERN.match(k)})
    return HISTORY_KEYS + tuple(extra)


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
    overrides: list[str] = []
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    try:
        if hydra_yaml.exists():
            choices = OmegaConf.load(hydra_yaml).hydra.runtime.get("choices") or {}
            params.update({k: str(v) for k, v in choices.items() if not k.startswith("hydra/") and v is not None})
        if (path / ".hydra" / "overrides.yaml").exists():
            overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "overrides.yaml"))]
            params.update(_parse_overrides(overrides))
    except Exception as e:  # noqa: BLE001 - any parse error of a damaged file
        print(f"[compare] {path}/.hydra is unreadable ({type(e).__name__}); its overrides are not shown.",
              file=sys.stderr)
    rows = _read_jsonl(path / "metrics.jsonl")
    history = _history(rows, _history_keys(rows))
    return RunRecord(name=name or path.name, source=str(path), status=status, params=params, config=config,
                     summary=summary, history=history, overrides=overrides, sweep=sweep_definition(path.parent))


def _sweep_keys(items: Iterable[str]) -> list[str]:
    """The keys of the sweep overrides among ``items`` (``objective=grpo,rloo``, ``seed=range(3)``,
    ``kl.kl_coef=interval(0.01,0.1)``), parsed with Hydra's override grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for item in items:
        try:
            override = parser.parse_override(str(item))
        except Exception:  # noqa: BLE001 - an override this Hydra cannot parse: judge by its text
            if "=" in str(item) and re.search(r"[,(]", str(item).split("=", 1)[1]):
                keys.append(str(item).split("=", 1)[0].lstrip("+~"))
            continue
        if override.is_sweep_override():
            keys.append(override.key_or_group)
    return list(dict.fromkeys(keys))


_SWEEPS: dict[str, Optional[dict[str, Any]]] = {}


def sweep_definition(folder: Path) -> Optional[dict[str, Any]]:
    """The sweep whose folder is ``folder`` (it holds Hydra's ``multirun.yaml``): ``{"dir": folder, "overrides":
    the command-line overrides of the sweep, "swept": the keys it swept}`` (the sweeper's ``params``, from a
    ``sweep=...`` config, included); None when ``folder`` is no sweep folder or its file is unreadable."""
    from omegaconf import OmegaConf

    key = str(Path(folder).resolve())
    if key not in _SWEEPS:
        definition = None
        path = Path(folder) / "multirun.yaml"
        if path.exists():
            try:
                hydra = OmegaConf.load(path).hydra
                task = [str(o) for o in (hydra.overrides.task or [])]
                params = hydra.sweeper.get("params") if "sweeper" in hydra else None
                params = OmegaConf.to_container(params) if params is not None else {}
                items = task + [f"{k}={v}" for k, v in (params or {}).items()]
                definition = {"dir": str(folder), "overrides": task, "swept": _sweep_keys(items)}
            except Exception as e:  # noqa: BLE001 - a damaged file costs the sweep definition only
                print(f"[compare] {path} is unreadable ({type(e).__name__}); its sweep definition is not used.",
                      file=sys.stderr)
        _SWEEPS[key] = definition
    return _SWEEPS[key]


# ------------------------------------------------------------------------------------------------- W&B runs
def record_from_wandb_run(run: Any) -> RunRecord:
    """A run from a ``wandb.apis.public.Run`` (public API: ``name``, ``state``, ``tags``, ``config``,
    ``summary_metrics``, ``scan_history``). Overrides come from the ``key=value`` tags that rlhf_exp gives every run;
    the status from the ``status`` rlhf_exp writes into the summary, else the W&B state."""
    summary = dict(run.summary_metrics or {})
    state = str(getattr(run, "state", "") or "")
    status = str(summary.get("status") or (FINISHED if state == "finished" else f"no summary (W&B state {state})"))
    history = _history(run.scan_history(keys=["_step", *EVAL_KEYS]), EVAL_KEYS)
    for key in ("perf/samples_per_s", *BUDGET_KEYS, *sorted(k for k in summary if EXTRA_EVAL_PATTERN.match(k))):
        history.update(_history(run.scan_history(keys=["_step", key]), (key,)))
    tags = [str(t) for t in (run.tags or [])]
    return RunRecord(name=str(run.name), source=str(getattr(run, "url", "") or run.name), status=status,
                     params=_parse_overrides(tags), config=dict(run.config or {}), summary=summary,
                     history=history, overrides=[t for t in tags if "=" in t])


def load_wandb_runs(path: str, group: Optional[str] = None, sweep: Optional[str] = None) -> list[RunRecord]:
    """The runs of W&B project ``entity/project``: of one group (a Hydra multirun) or of one W&B sweep when given,
    through ``wandb.Api`` (needs W&B credentials and network). A W&B sweep's parameters are its swept keys."""
    import wandb

    api = wandb.Api()
    if sweep:
        sweep_obj = api.sweep(f"{path}/{sweep}")
        runs = sweep_obj.runs
        swept = list((getattr(sweep_obj, "config", None) or {}).get("parameters") or {})
        definition = {"dir": f"{path}/{sweep}", "overrides": [], "swept": swept} if swept else None
    else:
        runs, definition = api.runs(path, filters={"group": group} if group else None), None
    records = [record_from_wandb_run(r) for r in runs]
    for r in records:
        r.sweep = definition
    if not records:
        what = f" with group {group!r}" if group else f" in sweep {sweep!r}" if sweep else ""
        raise LookupError(f"No W&B runs in {path}{what}.")
    return records

