"""Writing ``compare``'s results: markdown tables, CSV files, the report (report.md) and the W&B summary table."""
from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from rlhf_exp.compare.budget import AXES, format_budget
from rlhf_exp.compare.confounds import ConfoundReport, environment_summary
from rlhf_exp.compare.runs import FINISHED, RunRecord
from rlhf_exp.compare.stats import IQM_MIN_SEEDS, interval_text


def _cell(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells]
    return "\n".join(lines)


RUN_HEADER = {"eval/reward_mean": "reward", "eval/kl": "KL (nats/seq)", "eval/win_rate": "win rate",
              "wall_s": "wall (s)", "samples_per_s": "samples/s", "at": "at"}
DIGITS = {"wall_s": 0, "samples_per_s": 1}


def metric_header(metric: str) -> str:
    """``reward``, ``KL (nats/seq)``, ``gold reward`` (a judge: ``eval/gold/reward_mean``), ``win rate``."""
    if metric in RUN_HEADER:
        return RUN_HEADER[metric]
    parts = metric.split("/")
    return f"{parts[1]} reward" if len(parts) == 3 and parts[2] == "reward_mean" else metric


def runs_markdown(rows: Sequence[Mapping[str, Any]], axis: str = "steps") -> str:
    cols = [c for c in rows[0].keys() if c != "path"]  # the path is in runs.csv
    body = [[format_budget(r[c], axis) if c == "at" else _cell(r[c], DIGITS.get(c, 3)) for c in cols] for r in rows]
    return markdown_table([metric_header(c) for c in cols], body)


def _at_range(a: Mapping[str, Any], axis: str) -> str:
    lo, hi = a.get("at_min", math.nan), a.get("at_max", math.nan)
    if math.isnan(lo):
        return ""
    return format_budget(lo, axis) if lo == hi else f"{format_budget(lo, axis)} to {format_budget(hi, axis)}"


def aggregated_markdown(aggs: Sequence[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str] = (),
                        axis: str = "steps", marked: Sequence[str] = ()) -> str:
    """The groups: objective, kl, ``keys`` (those in ``marked``, the confounds, flagged ``(!)``), seeds, not
    finished, where the values were taken, and each metric as ``mean [95% CI]`` (an IQM column for each metric
    when a group has 5+ seeds), wall time and samples/s."""
    metrics = list(metrics) or ["eval/reward_mean", "eval/kl"]
    with_iqm = any(a["n"] >= IQM_MIN_SEEDS for a in aggs)
    header = ["objective", "kl", *[f"{k} (!)" if k in marked else k for k in keys], "seeds", "not finished", "at"]
    for m in metrics:
        header.append(metric_header(m))
        if with_iqm:
            header.append(f"{metric_header(m)} IQM")
    header += ["wall (s)", "samples/s"]

    def iv(a, m, digits=3):
        return interval_text(a.get(f"{m}_mean", math.nan), a.get(f"{m}_ci_low"), a.get(f"{m}_ci_high"), digits)

    body = []
    for a in aggs:
        row = [a["objective"], a["kl"], *[a[k] for k in keys], a["n"], a["not_finished"], _at_range(a, axis)]
        for m in metrics:
            row.append(iv(a, m))
            if with_iqm:
                row.append(interval_text(a.get(f"{m}_iqm", math.nan), a.get(f"{m}_iqm_low"), a.get(f"{m}_iqm_high")))
        row += [iv(a, "wall_s", DIGITS["wall_s"]), iv(a, "samples_per_s", DIGITS["samples_per_s"])]
        body.append(row)
    return markdown_table(header, body)


def improvement_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    body = [[r["a"], r["b"], metric_header(r["metric"]), interval_text(r["p"], r["ci_low"], r["ci_high"]),
             r["n_a"], r["n_b"]] for r in results]
    return markdown_table(["A", "B", "metric", "P(A > B) [95% CI]", "runs A", "runs B"], body)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c, "")) for c in cols})


def csv_rows(aggs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The groups as CSV/W&B rows: without the label and the per-run values."""
    return [{k: v for k, v in a.items() if k not in ("label", "_values")} for a in aggs]


# ------------------------------------------------------------------------------------------------- reproduce
def run_command(r: RunRecord) -> str:
    return "python -m rlhf_exp " + " ".join(shlex.quote(o) for o in r.overrides)


def sweep_commands(runs: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """``[(sweep folder, command), ...]``: the multirun command of each sweep the runs come from."""
    seen: dict[str, str] = {}
    for r in runs:
        if r.sweep and r.sweep.get("overrides") and r.sweep["dir"] not in seen:
            seen[r.sweep["dir"]] = "python -m rlhf_exp -m " + " ".join(shlex.quote(o) for o in r.sweep["overrides"])
    return list(seen.items())


def reproduce_markdown(runs: Sequence[RunRecord], compare_command: Optional[str]) -> list[str]:
    commits = sorted({str(r.environment.get("git", {}).get("commit")) for r in runs
                      if r.environment.get("git", {}).get("commit")})
    dirty = [r.name for r in runs if r.environment.get("git", {}).get("dirty")]
    lines = []
    if commits:
        lines += ["The code: " + ", ".join(f"`{c}`" for c in commits) + (
            f" (with uncommitted changes in {len(dirty)} run(s): {', '.join(dirty[:5])}: the commit alone does not "
            f"reproduce them)" if dirty else "") + "; then `make install` (the tested dependency set, "
            "requirements.lock).", ""]
    else:
        lines += ["The runs record no git commit (run from an installed package, or before it was recorded).", ""]
    sweeps = sweep_commands(runs)
    loose = [r for r in runs if not (r.sweep and r.sweep.get("overrides"))]
    block = [cmd + f"    # {folder}" for folder, cmd in sweeps]
    block += [run_command(r) + f"    # {r.name}" for r in loose]
    if compare_command:
        block.append(compare_command)
    lines += ["```bash", *block, "```", ""]
    if sweeps:
        lines += ["<details><summary>Each run's own command (its .hydra/overrides.yaml)</summary>", "", "```bash",
                  *[run_command(r) + f"    # {r.name}" for r in runs if r not in loose], "```", "", "</details>", ""]
    return lines


# ------------------------------------------------------------------------------------------------- the report
def _question_text(result: Mapping[str, Any], runs: Sequence[RunRecord]) -> list[str]:
    swept = [k for k in result["swept"] if k != "seed"]
    finished = [r for r in runs if r.finished]
    values = {k: sorted({r.param(k) for r in finished}) for k in result["swept"]}
    parts = [f"`{k}` = {', '.join(values[k])}" for k in swept]
    seeds = values.get("seed", sorted({r.param('seed') for r in finished}))
    sizes = sorted({a["n"] for a in result["aggregated"] if a["n"]})
    axis, budget = result["axis"], result["budget"]
    lines = [f"Which setting of {', '.join(f'`{k}`' for k in swept) or '(nothing: one setting)'} gives the higher "
             f"eval reward at an equal {axis} budget?", "",
             f"- swept: {'; '.join(parts) or '(nothing differs but the seed)'} ({result['question_source']})",
             f"- seeds: {', '.join(seeds)} ({'/'.join(str(s) for s in sizes) or 0} finished per group)",
             f"- runs: {len(runs)}, finished: {len(finished)}"]
    if axis == "steps":
        lines.append(f"- compared at step {format_budget(budget, axis).split()[0] if not math.isnan(budget) else '?'}"
                     f" (the largest all finished runs reached), each run's last evaluation at or before it")
    else:
        lines.append(f"- compared at {format_budget(budget, axis)} (`{AXES[axis]}`: the largest budget all "
                     f"finished runs reached); each run's values are its last evaluation at or before it, never "
                     f"interpolated (column `at`)")
    if result.get("axis_note"):
        lines.append(f"- note: {result['axis_note']}")
    return lines + [""]


def confounds_markdown(confounds: ConfoundReport) -> list[str]:
    lines = []
    warnings = confounds.warnings()
    if warnings:
        lines += [f"**WARNING: {len(warnings)} difference(s) besides the swept keys and the seed.** A difference "
                  f"below may explain a gap between groups as well as the swept keys do; groups are split by the "
                  f"config keys among them (marked `(!)` in the table).", ""]
        lines += [f"- {w}" for w in warnings] + [""]
    else:
        lines += ["None found: the runs differ only in the swept keys and the seed, in their resolved configs and "
                  "in their recorded environments.", ""]
    if confounds.explained:
        lines += ["Set by the swept choices (not confounds; the config each run's swept values give, composed from "
                  "conf/, has them):", ""] + [f"- {d.describe()}" for d in confounds.explained] + [""]
    if confounds.notes:
        lines += ["Checked: " + "; ".join(confounds.notes) + ".", ""]
    return lines


def environment_markdown(runs: Sequence[RunRecord], confounds: ConfoundReport) -> list[str]:
    with_env = [r for r in runs if r.environment]
    if not with_env:
        return ["No run records its environment (summary.json from before it was recorded).", ""]
    differing = {d.key for d in confounds.environment}
    rows = [[k, v if k not in differing else f"{v} (differs: see Confounds)", f"{n} of {len(with_env)}"]
            for k, v, n in environment_summary(with_env)]
    return [markdown_table(["", "value (most runs)", "runs"], rows), ""]


def report_markdown(result: Mapping[str, Any], runs: Sequence[RunRecord], title: str,
                    compare_command: Optional[str] = None) -> str:
    """The self-contained report: the question, the table with intervals at the equal budget, the probability
    of improvement asked for, the runs, the plots (beside the report), the confounds, the environment, and the
    commands that reproduce it all."""
    rows, aggs, axis = result["rows"], result["aggregated"], result["axis"]
    failed = [row for row in rows if row["status"] != FINISHED]
    text = [f"# {title}", "", "## Question", "", *_question_text(result, runs)]
    if result["confounds"].warnings():
        text += [f"**WARNING: confounds found ({len(result['confounds'].warnings())}); see Confounds.**", ""]
    text += ["## Results at equal budget (mean [95% bootstrap CI] over seeds)", "",
             aggregated_markdown(aggs, result["group_keys"], result["metrics"], axis, result["confounds"].keys), "",
             "Mean over the finished seeds of each group, with the 95% percentile-bootstrap interval of the mean "
             "(scipy.stats.bootstrap, 10,000 resamples; with 2 or 3 seeds it spans the lowest to the highest seed, with "
             "1 there is none); IQM (interquartile mean) from 5 seeds on. `at`: where the values were taken. "
             "Reward: mean training reward-model score of the eval completions; KL: the exact per-token KL to the "
             "reference summed per sequence (nats); wall time and samples/s are each run's whole training loop. "
             "docs/compare.md defines every column.", ""]
    if result.get("improvements"):
        text += ["## Probability of improvement", "", improvement_markdown(result["improvements"]), "",
                 "P(A > B): the probability that a run of A scores higher than a run of B (ties count half; "
                 "rliable's definition), with a bootstrap interval that resamples the runs of A and of B.", ""]
    text += ["## Runs", "", runs_markdown(rows, axis), ""]
    if failed:
        text += ["## Not finished", ""] + [f"- {row['run']}: {row['status']}" for row in failed] + [""]
    text += ["## Plots", "", "![frontier](frontier.png)", "", "![curves](curves.png)", "",
             "## Confounds", "", *confounds_markdown(result["confounds"]),
             "## Environment", "", *environment_markdown([r for r in runs if r.finished] or runs, result["confounds"]),
             "## Reproduce", "", *reproduce_markdown(runs, compare_command)]
    return "\n".join(text)


# ------------------------------------------------------------------------------------------------- W&B
def log_to_wandb(project_path: str, group: Optional[str], title: str, result: Mapping[str, Any]) -> Optional[str]:
    """Log the tables to W&B: a run of job type ``compare`` in project ``entity/project`` (and ``group``), with
    ``compare/aggregated``, ``compare/runs`` and ``compare/improvement`` as tables (also in its summary) and the
    report's markdown in its summary. Returns the run's URL (None offline)."""
    import wandb

    entity, _, project = project_path.rpartition("/")

    def table(rows: Sequence[Mapping[str, Any]]) -> Any:
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        data = [[None if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c) for c in cols] for r in rows]
        return wandb.Table(columns=cols, data=data)

    run = wandb.init(project=project or project_path, entity=entity or None, group=group, job_type="compare",
                     name=f"compare: {title}"[:128], config={"swept": list(result["swept"]), "axis": result["axis"],
                                                              "budget": result["budget"]})
    tables = {"compare/aggregated": table(csv_rows(result["aggregated"])), "compare/runs": table(result["rows"])}
    if result.get("improvements"):
        tables["compare/improvement"] = table(result["improvements"])
    run.log(tables)
    for k, v in tables.items():
        run.summary[k] = v
    run.summary["compare/report"] = result["report"]
    run.summary["compare/confounds"] = len(result["confounds"].warnings())
    url = getattr(run, "url", None)
    run.finish()
    return url
