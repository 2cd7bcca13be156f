"""Tables of ``compare``: the question (the swept keys), one row per run with its values at the equal budget, and
the runs that differ only by seed grouped, with intervals (stats.py)."""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping, Optional, Sequence

from rlhf_exp.compare import stats
from rlhf_exp.compare.budget import value_at_budget
from rlhf_exp.compare.runs import EVAL_KEYS, EXTRA_EVAL_PATTERN, FINISHED, GROUP_KEYS, NOT_COMPARED, SEED_KEY, \
    RunRecord

# Per-group statistics of these run columns (besides the eval metrics): the run's own totals, not at the budget.
RUN_TOTALS = ("wall_s", "samples_per_s")


def _differing(runs: Sequence[RunRecord], keys: Iterable[str]) -> list[str]:
    return [k for k in keys if len({r.param(k) for r in runs}) > 1]


def _order(keys: Iterable[str]) -> list[str]:
    order = {k: i for i, k in enumerate(GROUP_KEYS)}
    return sorted(dict.fromkeys(keys), key=lambda k: (order.get(k, len(order)), k == SEED_KEY, k))


def question(runs: Sequence[RunRecord], declared: Optional[Sequence[str]] = None) -> tuple[list[str], str]:
    """The keys the comparison is about, objective and kl first and seed last, and where they come from:

    - ``declared`` (``--swept``) when given;
    - else the keys swept by the runs' sweeps (each multirun's ``multirun.yaml``, a W&B sweep's parameters), and,
      when the runs come from more than one sweep or from none, the config groups whose choice differs between
      them (``objective``, ``kl``, ``model`` ...);
    - when that leaves nothing but the seed, every override whose value differs.

    Only keys whose values differ between the runs are kept (and ``seed``, the replicate key, when it differs).
    Everything else that differs is a confound (confounds.py)."""
    if declared:
        return _order(_differing(runs, [*declared, SEED_KEY])), "named with --swept"
    override_keys = sorted({k for r in runs for k in r.params if k.split(".")[0] not in NOT_COMPARED})
    in_sweep = [r for r in runs if r.sweep]
    dirs = sorted({r.sweep["dir"] for r in in_sweep})
    loose = len(runs) - len(in_sweep)
    keys = [k for r in in_sweep for k in r.sweep["swept"]]
    how = [f"swept in the sweep {dirs[0]} (its multirun.yaml)" if len(dirs) == 1 else
           f"swept in {len(dirs)} sweeps: {', '.join(dirs)} (their multirun.yaml)"] if dirs else []
    if len(dirs) + (loose > 0) > 1 or loose:
        from rlhf_exp.config import config_groups

        groups = set(config_groups()) - {"sweep", "logger"}
        chosen = [k for k in _differing(runs, override_keys) if k in groups]
        keys += chosen
        if chosen:
            how.append(f"the config groups whose choice differs between "
                       f"{'sweeps' if not loose else 'runs from no sweep' if not dirs else 'sweeps and runs'}")
    if not [k for k in _differing(runs, keys) if k != SEED_KEY]:
        differing = [k for k in _differing(runs, override_keys) if k != SEED_KEY]
        if differing:
            keys += differing
            how.append("the overrides whose values differ (nothing else did)")
    return _order(_differing(runs, [*keys, SEED_KEY])), "; ".join(how) or "nothing differs but the seed"


def swept_keys(runs: Sequence[RunRecord], declared: Optional[Sequence[str]] = None) -> list[str]:
    """The keys of :func:`question`."""
    return question(runs, declared)[0]


def eval_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The eval metrics to compare: reward and KL, then any judge's score and the win rate the runs log."""
    extra = {k for r in runs for k in [*r.history, *(s[:-4] for s in r.summary if s.endswith("_end"))]
             if EXTRA_EVAL_PATTERN.match(k)}
    return list(EVAL_KEYS) + sorted(extra)


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _std(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.stdev(vals) if len(vals) > 1 else math.nan


def _samples_per_s(r: RunRecord) -> float:
    per_step = [v for _, v in r.history.get("perf/samples_per_s", []) if v > 0]
    # harmonic mean of the per-step rates = all samples / all step time (evaluations excluded)
    samples_s = len(per_step) / sum(1 / v for v in per_step) if per_step else math.nan
    if math.isnan(samples_s) and r.summary.get("perf/samples_per_s_end") is not None:
        samples_s = float(r.summary["perf/samples_per_s_end"])
    return samples_s


def run_rows(runs: Sequence[RunRecord], swept: Sequence[str], axis: str = "steps", budget: float = math.nan,
             metrics: Sequence[str] = EVAL_KEYS, extra_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per run: run, status, objective, kl, the swept keys, ``extra_keys`` (confounds), ``at`` (where on
    ``axis`` the values were taken: the last evaluation at or before ``budget``; NaN budget: the last one), the
    ``metrics`` there, the run's wall time and samples/s."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.name, "status": r.status, "objective": r.objective, "kl": r.kl}
        row.update({k: r.param(k) for k in [*swept, *extra_keys] if k not in GROUP_KEYS})
        at, _ = value_at_budget(r, metrics[0], axis, budget)
        row["at"] = at
        for m in metrics:
            row[m] = value_at_budget(r, m, axis, budget)[1]
        row.update({"wall_s": float(r.summary.get("wall_s", math.nan)), "samples_per_s": _samples_per_s(r),
                    "path": r.source})
        rows.append(row)
    return rows


def group_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``ppo fixed kl_coef=0.05``: objective, kl, then each key's last part with its value."""
    parts = [str(row["objective"]), str(row["kl"])]
    parts += [f"{k.split('.')[-1]}={row[k]}" for k in keys if k not in GROUP_KEYS]
    return " ".join(parts)


def group_keys(swept: Sequence[str], extra_keys: Sequence[str] = ()) -> list[str]:
    """The keys that tell groups apart: the swept keys but seed and the group columns, then ``extra_keys``."""
    return [k for k in dict.fromkeys([*swept, *extra_keys]) if k not in GROUP_KEYS and k != SEED_KEY]


def aggregate(rows: Sequence[Mapping[str, Any]], swept: Sequence[str], metrics: Sequence[str] = EVAL_KEYS,
              extra_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows that differ only by seed, grouped: ``n`` finished, ``not_finished``, and for each metric its mean,
    sample std, 95% bootstrap interval of the mean (``_ci_low``/``_ci_high``) and IQM with its interval (5+
    seeds); ``_values`` holds the finished runs' values (for the probability of improvement)."""
    keys = group_keys(swept, extra_keys)
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
        agg["at_min"] = min((float(m["at"]) for m in ok if not math.isnan(m["at"])), default=math.nan)
        agg["at_max"] = max((float(m["at"]) for m in ok if not math.isnan(m["at"])), default=math.nan)
        agg["_values"] = {}
        for metric in (*metrics, *RUN_TOTALS):
            vals = [float(m[metric]) for m in ok]
            s = stats.summarize(vals)
            agg[f"{metric}_mean"], agg[f"{metric}_std"] = s["mean"], s["std"]
            agg[f"{metric}_ci_low"], agg[f"{metric}_ci_high"] = s["ci_low"], s["ci_high"]
            if metric not in RUN_TOTALS:
                agg[f"{metric}_iqm"], agg[f"{metric}_iqm_low"], agg[f"{metric}_iqm_high"] = \
                    s["iqm"], s["iqm_low"], s["iqm_high"]
            agg["_values"][metric] = [v for v in vals if not math.isnan(v)]
        agg["label"] = group_label(agg, keys)
        out.append(agg)
    return out


def find_group(aggs: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    """The group ``name`` names: its label, or words that are all words of exactly one label (``grpo``,
    ``rloo kl_coef=0.1``). A LookupError lists the groups otherwise."""
    exact = [a for a in aggs if a["label"] == name]
    if exact:
        return exact[0]
    words = name.split()
    matches = [a for a in aggs if all(w in a["label"].split() for w in words)]
    if len(matches) == 1:
        return matches[0]
    labels = "; ".join(a["label"] for a in aggs)
    what = "matches no group" if not matches else f"matches {len(matches)} groups"
    raise LookupError(f"--improvement {name!r} {what}; the groups are: {labels} (name one by its label or by words "
                      f"that only its label has).")


def improvement(aggs: Sequence[Mapping[str, Any]], a: str, b: str, metric: str = "eval/reward_mean"
                ) -> dict[str, Any]:
    """The probability that a run of group ``a`` scores higher on ``metric`` than a run of group ``b`` (ties
    half), with its 95% bootstrap interval (stats.probability_of_improvement_ci)."""
    ga, gb = find_group(aggs, a), find_group(aggs, b)
    if metric not in ga["_values"]:
        raise LookupError(f"--metric {metric}: not a compared metric; compared: {', '.join(ga['_values'])}.")
    xa, xb = ga["_values"].get(metric, []), gb["_values"].get(metric, [])
    p, low, high = stats.probability_of_improvement_ci(xa, xb)
    return {"a": ga["label"], "b": gb["label"], "metric": metric, "p": p, "ci_low": low, "ci_high": high,
            "n_a": len(xa), "n_b": len(xb)}
