"""Budget axes: where each evaluation of a run lies in steps, samples, tokens, FLOPs or wall time, and the values
of a metric at an equal budget.

The training loop logs the cumulative budgets at every step (``budget/samples``, ``budget/tokens``,
``budget/flops``, ``budget/wall_s``; docs/compare.md defines them). The evaluation at step ``s`` happens after step
``s``'s update, so it lies at the budget logged at step ``s`` (0 at step 0). The value of a run at budget ``B`` is
its last evaluation at or before ``B``: a measured value, never interpolated; the tables show where it was taken.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from rlhf_exp.compare.runs import RunRecord

AXES = {"steps": None, "samples": "budget/samples", "tokens": "budget/tokens", "flops": "budget/flops",
        "time": "budget/wall_s"}
AXIS_LABELS = {"steps": "training steps", "samples": "generated samples (cumulative)",
               "tokens": "generated tokens (cumulative)", "flops": "policy FLOPs (cumulative, analytic)",
               "time": "training wall time (s, evaluations excluded)"}
AXIS_UNITS = {"steps": "steps", "samples": "samples", "tokens": "tokens", "flops": "FLOPs", "time": "s"}
AUTO = "auto"
DEFAULT_AUTO = "samples"   # what --x auto uses when every run logs it (else steps)


class BudgetError(LookupError):
    """An axis some runs do not log."""


def has_axis(run: RunRecord, axis: str) -> bool:
    return AXES[axis] is None or bool(run.history.get(AXES[axis]))


def resolve_axis(runs: Sequence[RunRecord], requested: str) -> tuple[str, Optional[str]]:
    """The axis to compare on and a note to print (None when there is nothing to say). ``auto``: ``samples`` when
    every finished run logs ``budget/samples``, else ``steps`` with a note. An axis asked for by name that a
    finished run lacks is a :class:`BudgetError` naming the runs."""
    finished = [r for r in runs if r.finished]
    if requested == AUTO:
        lacking = [r.name for r in finished if not has_axis(r, DEFAULT_AUTO)]
        if finished and not lacking:
            return DEFAULT_AUTO, None
        note = (f"compared at equal training steps: {len(lacking)} of the {len(finished)} finished runs do not log "
                f"{AXES[DEFAULT_AUTO]} (e.g. {', '.join(lacking[:3])})") if lacking else None
        return "steps", note
    if requested not in AXES:
        raise BudgetError(f"--x {requested}: unknown axis; valid: {', '.join([AUTO, *AXES])}.")
    lacking = [r.name for r in finished if not has_axis(r, requested)]
    if lacking:
        raise BudgetError(
            f"--x {requested}: {len(lacking)} of the {len(finished)} finished runs do not log {AXES[requested]} "
            f"({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}); the training loop logs it at every "
            f"step from the version that defines it (docs/compare.md). Compare those runs with --x steps.")
    return requested, None


def budget_at_step(run: RunRecord, axis: str, step: int) -> Optional[float]:
    """The run's cumulative ``axis`` budget after ``step`` training steps: the value logged at that step, else the
    last one logged before it (0 at step 0); None when unknown."""
    if AXES[axis] is None:
        return float(step)
    points = run.history.get(AXES[axis], [])
    before = [v for s, v in points if s <= step]
    if before:
        exact = [v for s, v in points if s == step]
        return exact[-1] if exact else before[-1]
    return 0.0 if step == 0 else None


def eval_points(run: RunRecord, metric: str, axis: str) -> list[tuple[float, float]]:
    """``[(budget, value), ...]`` of each evaluation of ``metric``, in order. A run without the metric's history
    (a W&B run whose history was not read) has its final value at its final step, on the steps axis only."""
    hist = run.history.get(metric)
    if not hist:
        end, steps = run.summary.get(f"{metric}_end"), run.summary.get("steps")
        if axis == "steps" and end is not None and steps is not None:
            return [(float(steps), float(end))]
        return []
    out = []
    for step, value in hist:
        x = budget_at_step(run, axis, step)
        if x is not None:
            out.append((x, value))
    return out


def equal_budget(runs: Sequence[RunRecord], axis: str, metric: str = "eval/reward_mean") -> float:
    """The largest budget every one of ``runs`` reached at an evaluation of ``metric`` (NaN when one has none)."""
    reached = []
    for r in runs:
        points = eval_points(r, metric, axis)
        reached.append(max(x for x, _ in points) if points else math.nan)
    return min(reached) if reached and not any(math.isnan(x) for x in reached) else math.nan


def value_at_budget(run: RunRecord, metric: str, axis: str, budget: float) -> tuple[float, float]:
    """``(budget_used, value)``: the run's last evaluation of ``metric`` at or before ``budget`` (NaNs if none).
    With ``budget`` NaN: its last evaluation."""
    points = eval_points(run, metric, axis)
    if not math.isnan(budget):
        tol = 1e-9 * max(1.0, abs(budget))
        points = [(x, v) for x, v in points if x <= budget + tol]
    return points[-1] if points else (math.nan, math.nan)


def format_budget(x: float, axis: str) -> str:
    """``4``, ``1,024 samples``, ``3.2e+12 FLOPs``, ``12.5 s``."""
    if x is None or math.isnan(x):
        return ""
    if axis == "flops" or abs(x) >= 1e7:
        return f"{x:.3g} {AXIS_UNITS[axis]}"
    if axis == "time":
        return f"{x:.1f} s"
    return f"{x:,.0f} {AXIS_UNITS[axis]}"
