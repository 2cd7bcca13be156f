"""``python -m rlhf_exp.compare``: put runs side by side, from their folders or from W&B.

Usage::

    python -m rlhf_exp.compare multirun/2026-11-22/10-00-00                 # a sweep folder (or several)
    python -m rlhf_exp.compare outputs/2026-11-22/10-00-00_objective=grpo outputs/... --out cmp/
    python -m rlhf_exp.compare --wandb my-entity/rlhf_exp --group multirun/2026-11-22/10-00-00
    python -m rlhf_exp.compare --wandb my-entity/rlhf_exp --sweep abc123xy                  # a W&B sweep

Writes into ``--out`` (default: ``<the one folder given>/compare``, else ``./compare``):

- ``runs.csv``: one row per run: status, objective, KL controller, the swept overrides (those whose value differs
  between the runs), final eval/reward_mean and eval/kl, train wall time and samples/s (all samples over all step
  time, evaluations excluded);
- ``aggregated.csv``: runs that differ only by ``seed`` grouped, with mean and sample standard deviation;
- ``frontier.png``: final eval reward against final eval KL, one point per group (error bars: std over seeds);
- ``curves.png``: eval reward and eval KL over training steps (metrics.jsonl), mean over seeds with a +-std band;
- ``report.md``: both tables in markdown (also printed).

Failed runs and runs without ``summary.json`` (still running, or killed) are listed in the tables with their status;
they are left out of the means and the plots.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

FINISHED = "finished"
SEED_KEY = "seed"
EVAL_KEYS = ("eval/reward_mean", "eval/kl")
REWARD_LABEL = "final eval reward (mean reward-model score)"
KL_LABEL = "final eval KL to reference (nats / sequence)"
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


# ------------------------------------------------------------------------------------------------- tables
def swept_keys(runs: Sequence[RunRecord]) -> list[str]:
    """The override keys whose values differ between the runs: objective and kl first, seed last."""
    keys = sorted({k for r in runs for k in r.params if k.split(".")[0] not in NOT_COMPARED})
    swept = [k for k in keys if len({r.param(k) for r in runs}) > 1]
    order = {k: i for i, k in enumerate(GROUP_KEYS)}
    return sorted(swept, key=lambda k: (order.get(k, len(order)), k == SEED_KEY, k))


def _final(run: RunRecord, key: str) -> float:
    v = run.summary.get(f"{key}_end")
    if v is None and run.history.get(key):
        v = run.history[key][-1][1]
    return float(v) if v is not None else math.nan


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _std(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.stdev(vals) if len(vals) > 1 else math.nan


def run_rows(runs: Sequence[RunRecord], swept: Sequence[str]) -> list[dict[str, Any]]:
    """One row per run: run, status, objective, kl, the swept keys, reward, KL (final eval), wall time, samples/s."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.name, "status": r.status, "objective": r.objective, "kl": r.kl}
        row.update({k: r.param(k) for k in swept if k not in GROUP_KEYS})
        per_step = [v for _, v in r.history.get("perf/samples_per_s", []) if v > 0]
        # harmonic mean of the per-step rates = all samples / all step time (evaluations excluded)
        samples_s = len(per_step) / sum(1 / v for v in per_step) if per_step else math.nan
        if math.isnan(samples_s) and r.summary.get("perf/samples_per_s_end") is not None:
            samples_s = float(r.summary["perf/samples_per_s_end"])
        row.update({"eval/reward_mean": _final(r, "eval/reward_mean"), "eval/kl": _final(r, "eval/kl"),
                    "wall_s": float(r.summary.get("wall_s", math.nan)), "samples_per_s": samples_s,
                    "path": r.source})
        rows.append(row)
    return rows


def group_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``ppo fixed kl_coef=0.05``: objective, kl, then each key's last part with its value."""
    parts = [str(row["objective"]), str(row["kl"])]
    parts += [f"{k.split('.')[-1]}={row[k]}" for k in keys if k not in GROUP_KEYS]
    return " ".join(parts)


def aggregate(rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> list[dict[str, Any]]:
    """Rows that differ only by seed, grouped: n finished, n not finished, mean and sample std of the metrics."""
    keys = [k for k in swept if k not in GROUP_KEYS and k != SEED_KEY]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["objective"], row["kl"], *[row[k] for k in keys]), []).append(row)
    out = []
    for members in groups.values():
        ok = [m for m in members if m["status"] == FINISHED]
        agg: dict[str, Any] = {"objective": members[0]["objective"], "kl": members[0]["kl"]}
        agg.update({k: members[0][k] for k in keys})
        agg["n"] = len(ok)
        agg["not_finished"] = len(members) - len(ok)
        for metric in ("eval/reward_mean", "eval/kl", "wall_s", "samples_per_s"):
            vals = [float(m[metric]) for m in ok]
            agg[f"{metric}_mean"], agg[f"{metric}_std"] = _mean(vals), _std(vals)
        agg["label"] = group_label(agg, keys)
        out.append(agg)
    return out


def _cell(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells]
    return "\n".join(lines)


RUN_HEADER = {"eval/reward_mean": "reward", "eval/kl": "KL (nats/seq)", "wall_s": "wall (s)",
              "samples_per_s": "samples/s"}


DIGITS = {"wall_s": 0, "samples_per_s": 1}


def runs_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = [c for c in rows[0].keys() if c != "path"]  # the path is in runs.csv
    body = [[_cell(r[c], DIGITS.get(c, 3)) for c in cols] for r in rows]
    return markdown_table([RUN_HEADER.get(c, c) for c in cols], body)


def aggregated_markdown(aggs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    def pm(a, m, digits=3):
        mean, std = a[f"{m}_mean"], a[f"{m}_std"]
        if math.isnan(mean):
            return ""
        return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")

    header = ["objective", "kl", *keys, "seeds", "not finished", "reward", "KL (nats/seq)", "wall (s)", "samples/s"]
    body = [[a["objective"], a["kl"], *[a[k] for k in keys], a["n"], a["not_finished"], pm(a, "eval/reward_mean"),
             pm(a, "eval/kl"), pm(a, "wall_s", DIGITS["wall_s"]), pm(a, "samples_per_s", DIGITS["samples_per_s"])]
            for a in aggs]
    return markdown_table(header, body)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c, "")) for c in cols})


# ------------------------------------------------------------------------------------------------- plots
_MARKER_CYCLE = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")


def _palette(n: int) -> list[Any]:
    """``n`` colours, all different up to 20: tab10's ten, then tab20's ten lighter shades (cycling beyond)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(n)]


def _objective_colors(objectives: Iterable[str]) -> dict[str, Any]:
    """One colour per objective, the same in both plots."""
    names = sorted(set(objectives))
    return dict(zip(names, _palette(len(names))))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (pixels)


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


# Where a label may go, nearest first: (dx, dy) directions from its point, at growing distances (pixels).
_DIRECTIONS = ((1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1))
_RADII = (10, 22, 38, 58, 82, 110, 145)


def place_labels(points: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]], bounds: Box,
                 obstacles: Sequence[Box] = (), marker: float = 7.0) -> list[Box]:
    """Boxes for the labels of ``points`` (pixels), label ``i`` of size ``sizes[i]`` (width, height): each as near
    its point as possible without overlapping another label, any point's marker (a square of half-width
    ``marker``), or an ``obstacle`` (the legend), and inside ``bounds``. Greedy, the most crowded points first;
    when nothing is free, the candidate with the least overlap. Returns one box per point, same order."""
    markers = [(x - marker, y - marker, x + marker, y + marker) for x, y in points]

    def crowding(i: int) -> float:
        return -sum(1.0 / (1.0 + math.dist(points[i], q)) for q in points)

    placed: dict[int, Box] = {}
    for i in sorted(range(len(points)), key=crowding):
        (x, y), (w, h) = points[i], sizes[i]
        best, best_cost = None, math.inf
        for r in _RADII:
            for dx, dy in _DIRECTIONS:
                cx, cy = x + dx * r, y + dy * r * 0.7
                x0 = cx if dx > 0 else cx - w if dx < 0 else cx - w / 2
                y0 = cy - h / 2 if dy == 0 else cy if dy > 0 else cy - h
                box = (x0, y0, x0 + w, y0 + h)
                outside = max(0.0, bounds[0] - box[0]) + max(0.0, box[2] - bounds[2]) + \
                    max(0.0, bounds[1] - box[1]) + max(0.0, box[3] - bounds[3])
                cost = sum(_overlap(box, o) for o in [*placed.values(), *markers, *obstacles]) + outside * 1e4
                if cost < best_cost:
                    best, best_cost = box, cost
                if cost == 0.0:
                    break
            if best_cost == 0.0:
                break
        placed[i] = best
    return [placed[i] for i in range(len(points))]


def plot_frontier(aggs: Sequence[Mapping[str, Any]], runs: Sequence[RunRecord], path: Path, title: str) -> None:
    """Final eval reward against final eval KL: one point per group (mean over seeds, error bars +-1 std), one colour
    per objective and one marker per objective and KL controller (also in the legend), and every point labelled
    with its objective and swept values (placed clear of each other, the markers and the legend: place_labels);
    the policy before training
    (KL 0, mean start reward) as a black star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [a for a in aggs if a["n"] > 0 and not math.isnan(a["eval/kl_mean"])]
    colors = _objective_colors(a["objective"] for a in pts)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for a in pts:
        series.setdefault((a["objective"], a["kl"]), []).append(a)
    labelled: list[tuple[float, float, str, Any]] = []
    for k, ((obj, kl), members) in enumerate(sorted(series.items())):
        members = sorted(members, key=lambda a: a["eval/kl_mean"])
        xs = [a["eval/kl_mean"] for a in members]
        ys = [a["eval/reward_mean_mean"] for a in members]
        xe = [0.0 if math.isnan(a["eval/kl_std"]) else a["eval/kl_std"] for a in members]
        ye = [0.0 if math.isnan(a["eval/reward_mean_std"]) else a["eval/reward_mean_std"] for a in members]
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, color=colors[obj], marker=_MARKER_CYCLE[k % len(_MARKER_CYCLE)],
                    markersize=7, markeredgecolor="black", markeredgewidth=0.5, linestyle="-", linewidth=0.8,
                    capsize=3, elinewidth=0.8, alpha=0.9, label=f"{obj} ({kl} KL)")
        for a, x, y in zip(members, xs, ys):
            extra = a["label"].split(" ", 2)[2] if a["label"].count(" ") >= 2 else ""
            extra = extra if len(extra) <= 30 else extra[:29] + "…"
            labelled.append((x, y, f"{obj} {extra}".strip(), colors[obj]))
    start = _mean(float(r.summary.get("eval/reward_mean_start", math.nan)) for r in runs if r.finished)
    if not math.isnan(start):
        ax.plot([0.0], [start], marker="*", color="black", markersize=13, linestyle="none",
                label="policy before training")
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel(KL_LABEL)
    ax.set_ylabel(REWARD_LABEL)
    n_seeds = max((a["n"] for a in pts), default=0)
    sub = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one run per point"
    ax.set_title(f"{title}\nreward vs KL at the end of training ({sub})", fontsize=11)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=8, loc="lower right", numpoints=1, framealpha=0.9) if pts or not math.isnan(start) \
        else None
    fig.tight_layout()
    if labelled:
        _draw_point_labels(fig, ax, labelled, legend)
    fig.savefig(path)
    plt.close(fig)


def _draw_point_labels(fig: Any, ax: Any, labelled: Sequence[tuple[float, float, str, Any]], legend: Any) -> None:
    """Label every point of the frontier (``(x, y, text, colour)`` in data coordinates), placed by
    :func:`place_labels` clear of each other, of the markers and of the legend, with a thin leader line."""
    renderer = fig.canvas.get_renderer()
    pts = [tuple(ax.transData.transform((x, y))) for x, y, _, _ in labelled]
    sizes = []
    for _, _, text, _ in labelled:
        probe = ax.text(0, 0, text, fontsize=8, bbox=dict(boxstyle="round,pad=0.15"))
        ext = probe.get_window_extent(renderer)
        sizes.append((ext.width + 6, ext.height + 4))
        probe.remove()
    bbox = ax.get_window_extent(renderer)
    obstacles = []
    if legend is not None:
        e = legend.get_window_extent(renderer)
        obstacles.append((e.x0, e.y0, e.x1, e.y1))
    boxes = place_labels(pts, sizes, (bbox.x0, bbox.y0, bbox.x1, bbox.y1), obstacles)
    to_data = ax.transData.inverted()
    for (x, y, text, color), box in zip(labelled, boxes):
        cx, cy = to_data.transform(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
        note = ax.annotate(text, (x, y), xytext=(cx, cy), textcoords="data", fontsize=8, ha="center", va="center",
                           annotation_clip=False,
                           bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=color, lw=0.8, alpha=0.9),
                           arrowprops=dict(arrowstyle="-", color=color, lw=0.7, shrinkA=0, shrinkB=5))
        note.set_in_layout(False)


def _mean_curve(runs: Sequence[RunRecord], key: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs of ``key`` at the steps every run has."""
    per_run = [dict(r.history.get(key, [])) for r in runs]
    steps = sorted(set.intersection(*(set(h) for h in per_run))) if per_run else []
    means = [_mean(h[s] for h in per_run) for s in steps]
    stds = [_std([h[s] for h in per_run]) if len(per_run) > 1 else 0.0 for s in steps]
    return steps, means, stds


def plot_curves(groups: Sequence[tuple[str, Sequence[RunRecord]]], path: Path, title: str) -> None:
    """Eval reward (left) and eval KL (right) against the training step, one line per group (mean over its seeds,
    band +-1 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = [members[0].objective if members else "" for _, members in groups]
    if len(set(objectives)) == len(groups):     # one group per objective: the frontier's colours
        by_objective = _objective_colors(objectives)
        colors = [by_objective[o] for o in objectives]
    else:
        colors = _palette(len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for color, (label, members) in zip(colors, groups):
        for ax, key in zip(axes, EVAL_KEYS):
            steps, means, stds = _mean_curve(members, key)
            if not steps:
                continue
            ax.plot(steps, means, marker=".", color=color, label=f"{label} (n={len(members)})")
            if len(members) > 1:
                lo = [m - (0 if math.isnan(s) else s) for m, s in zip(means, stds)]
                hi = [m + (0 if math.isnan(s) else s) for m, s in zip(means, stds)]
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
    axes[0].set_ylabel("eval reward (mean reward-model score)")
    axes[1].set_ylabel("eval KL to reference (nats / sequence)")
    for ax in axes:
        ax.set_xlabel("training step (online: rollout + update; offline: optimizer step)")
        ax.grid(alpha=0.3)
    axes[0].set_title("eval reward during training", fontsize=10)
    axes[1].set_title("eval KL to the reference during training", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if handles:  # to the right of the plots, as long as it needs to be (the saved image grows to hold it)
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- driver
def compare(runs: Sequence[RunRecord], out: Path, title: str = "rlhf_exp") -> dict[str, Any]:
    """Write the tables, plots and report for ``runs`` into ``out``; returns the rows, groups and file paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    swept = swept_keys(runs)
    rows = run_rows(runs, swept)
    aggs = aggregate(rows, swept)
    keys = [k for k in swept if k not in GROUP_KEYS and k != SEED_KEY]
    write_csv(out / "runs.csv", rows)
    write_csv(out / "aggregated.csv", [{k: v for k, v in a.items() if k != "label"} for a in aggs])
    plot_frontier(aggs, runs, out / "frontier.png", title)
    by_label: dict[str, list[RunRecord]] = {}
    for r, row in zip(runs, rows):
        if r.finished:
            by_label.setdefault(group_label(row, keys), []).append(r)
    plot_curves(list(by_label.items()), out / "curves.png", title)
    failed = [row for row in rows if row["status"] != FINISHED]
    text = [f"# {title}", "", f"{len(rows)} runs, {len(rows) - len(failed)} finished; swept: "
            f"{', '.join(swept) or '(nothing differs)'}", "", "## Runs", "", runs_markdown(rows), ""]
    if any(a["n"] > 1 for a in aggs):
        text += ["## Over seeds (mean ± sample std)", "", aggregated_markdown(aggs, keys), ""]
    if failed:
        text += ["## Not finished", ""] + [f"- {row['run']}: {row['status']}" for row in failed] + [""]
    text += ["Final values are the last evaluation's (eval/reward_mean, eval/kl: mean per-sequence sum of the exact "
             "per-token KL to the reference, in nats); wall time is the training loop's, evaluations included; "
             "samples/s is training samples over training-step time (evaluations excluded).", "",
             "![frontier](frontier.png)", "", "![curves](curves.png)", ""]
    report = "\n".join(text)
    (out / "report.md").write_text(report)
    return {"rows": rows, "aggregated": aggs, "swept": swept, "report": report,
            "files": {n: out / n for n in ("runs.csv", "aggregated.csv", "frontier.png", "curves.png", "report.md")}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_exp.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="run folders and/or folders holding runs (a multirun sweep dir)")
    parser.add_argument("--out", help="output folder (default: <the one folder given>/compare, else ./compare)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (wandb.Api)")
    parser.add_argument("--group", help="with --wandb: only the runs of this W&B group (a Hydra multirun)")
    parser.add_argument("--sweep", help="with --wandb: only the runs of this W&B sweep id (sweeps/wandb_*.yaml)")
    parser.add_argument("--title", help="title of the plots and report")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser.error("give run/sweep folders, or --wandb ENTITY/PROJECT [--group G], not both")
    try:
        return _run(args)
    except (FileNotFoundError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.wandb:
        runs = load_wandb_runs(args.wandb, args.group, args.sweep)
        out = Path(args.out or "compare")
        title = args.title or " / ".join(x for x in (args.wandb, args.group, args.sweep) if x)
    else:
        dirs = find_run_dirs(args.paths)
        runs = [load_run_dir(d, n) for d, n in zip(dirs, short_names(dirs))]
        out = Path(args.out) if args.out else (Path(args.paths[0]) / "compare" if len(args.paths) == 1
                                               else Path("compare"))
        title = args.title or " + ".join(str(p).rstrip("/") for p in args.paths)
    result = compare(runs, out, title)
    print(result["report"].split("\n![frontier]")[0])
    print(f"Wrote {', '.join(str(p) for p in result['files'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
