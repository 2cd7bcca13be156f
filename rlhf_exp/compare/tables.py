"""Tables of ``compare``: the swept keys, one row per run, and runs grouped over seeds."""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

from rlhf_exp.compare.runs import FINISHED, GROUP_KEYS, NOT_COMPARED, SEED_KEY, RunRecord

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

