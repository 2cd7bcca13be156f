"""Plots of ``compare``: the reward-vs-KL frontier (with a label placement solver) and the curves over training."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rlhf_exp.compare import stats
from rlhf_exp.compare.budget import AXIS_LABELS, eval_points
from rlhf_exp.compare.runs import EVAL_KEYS, RunRecord
from rlhf_exp.compare.tables import _mean

REWARD_LABEL = "eval reward (mean reward-model score)"
KL_LABEL = "eval KL to reference (nats / sequence)"


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


def _err(a: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """The distance from the mean down to the interval's low end and up to its high end (0 where unknown)."""
    mean, low, high = (a.get(f"{metric}_{s}", math.nan) for s in ("mean", "ci_low", "ci_high"))
    if any(math.isnan(v) for v in (mean, low, high)):
        return 0.0, 0.0
    return max(0.0, mean - low), max(0.0, high - mean)


def plot_frontier(aggs: Sequence[Mapping[str, Any]], runs: Sequence[RunRecord], path: Path, title: str,
                  where: str = "at the end of training") -> None:
    """Eval reward against eval KL ``where`` (the equal budget): one point per group (mean over seeds, error bars:
    the 95% bootstrap interval of the mean), one colour per objective and one marker per objective and KL
    controller (also in the legend), and every point labelled with its objective and swept values (placed clear
    of each other, the markers and the legend: place_labels); the policy before training (KL 0, mean start
    reward) as a black star."""
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
        xe = list(zip(*[_err(a, "eval/kl") for a in members]))
        ye = list(zip(*[_err(a, "eval/reward_mean") for a in members]))
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
    sub = f"mean and 95% bootstrap CI over up to {n_seeds} seeds" if n_seeds > 1 else "one run per point"
    ax.set_title(f"{title}\nreward vs KL {where} ({sub})", fontsize=11)
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


def mean_curve(runs: Sequence[RunRecord], key: str, axis: str = "steps"
               ) -> tuple[list[float], list[float], list[float], list[float], bool]:
    """``(x, mean, ci_low, ci_high, interpolated)`` of ``key`` over ``runs`` against ``axis``: at the budgets of
    their evaluations when every run has the same ones; else on the union of their budgets within the range all
    of them cover, each run linearly interpolated between its evaluations (``interpolated`` True). The interval:
    95% bootstrap of the mean over the runs at each point (NaN with one run)."""
    import numpy as np

    per_run = [eval_points(r, key, axis) for r in runs]
    per_run = [p for p in per_run if p]
    if not per_run:
        return [], [], [], [], False
    xs0 = [x for x, _ in per_run[0]]
    if all([x for x, _ in p] == xs0 for p in per_run):
        grid, values, interpolated = xs0, [[v for _, v in p] for p in per_run], False
    else:
        lo, hi = max(p[0][0] for p in per_run), min(p[-1][0] for p in per_run)
        grid = sorted({x for p in per_run for x, _ in p if lo <= x <= hi})
        values = [list(np.interp(grid, [x for x, _ in p], [v for _, v in p])) for p in per_run]
        interpolated = True
    means, lows, highs = [], [], []
    for i in range(len(grid)):
        m, lo_, hi_ = stats.mean_ci([v[i] for v in values])
        means.append(m)
        lows.append(lo_)
        highs.append(hi_)
    return list(grid), means, lows, highs, interpolated


def plot_curves(groups: Sequence[tuple[str, Sequence[RunRecord]]], path: Path, title: str,
                axis: str = "steps") -> None:
    """Eval reward (left) and eval KL (right) against ``axis`` (steps, samples, tokens, FLOPs or time), one line
    per group (mean over its seeds, band: the 95% bootstrap interval of the mean; mean_curve)."""
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
    any_interpolated = False
    for color, (label, members) in zip(colors, groups):
        for ax, key in zip(axes, EVAL_KEYS):
            xs, means, lows, highs, interpolated = mean_curve(members, key, axis)
            if not xs:
                continue
            any_interpolated |= interpolated
            ax.plot(xs, means, marker=".", color=color, label=f"{label} (n={len(members)})")
            if len(members) > 1:
                lo = [m if math.isnan(v) else v for m, v in zip(means, lows)]
                hi = [m if math.isnan(v) else v for m, v in zip(means, highs)]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
    axes[0].set_ylabel("eval reward (mean reward-model score)")
    axes[1].set_ylabel("eval KL to reference (nats / sequence)")
    xlabel = AXIS_LABELS.get(axis, axis)
    if axis == "steps":
        xlabel = "training step (online: rollout + update; offline: optimizer step)"
    for ax in axes:
        ax.set_xlabel(xlabel + (" (runs interpolated between evaluations)" if any_interpolated else ""))
        ax.grid(alpha=0.3)
    axes[0].set_title("eval reward during training (mean, 95% bootstrap CI band)", fontsize=10)
    axes[1].set_title("eval KL to the reference during training (mean, 95% bootstrap CI band)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if handles:  # to the right of the plots, as long as it needs to be (the saved image grows to hold it)
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
