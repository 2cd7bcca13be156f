"""The ``compare`` driver and its command line (``python -m rlhf_exp.compare``)."""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from rlhf_exp.compare import confounds as confound_check
from rlhf_exp.compare.budget import AUTO, AXES, BudgetError, equal_budget, format_budget, resolve_axis
from rlhf_exp.compare.plots import plot_curves, plot_frontier
from rlhf_exp.compare.report import aggregated_markdown, csv_rows, improvement_markdown, log_to_wandb, \
    report_markdown, runs_markdown, write_csv
from rlhf_exp.compare.runs import FINISHED, RunRecord, find_run_dirs, load_run_dir, load_wandb_runs, short_names
from rlhf_exp.compare.tables import aggregate, eval_metrics, group_keys, group_label, improvement, question, \
    run_rows

DESCRIPTION = "``python -m rlhf_exp.compare``: put runs side by side, from their folders or from W&B."
FILES = ("runs.csv", "aggregated.csv", "frontier.png", "curves.png", "report.md")


def _unique_names(runs: Sequence[RunRecord]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name}#{seen[r.name]}"
        else:
            seen[r.name] = 0


def compare(runs: Sequence[RunRecord], out: Path, title: str = "rlhf_exp", x: str = AUTO,
            swept: Optional[Sequence[str]] = None, improvements: Sequence[tuple[str, str]] = (),
            metric: str = "eval/reward_mean", command: Optional[str] = None) -> dict[str, Any]:
    """Write the tables, plots and report for ``runs`` into ``out``; returns the rows, groups, confounds, report
    and file paths.

    ``x``: the budget axis (steps | samples | tokens | flops | time | auto); the tables hold each run's values at
    the largest budget all finished runs reached. ``swept``: the keys the comparison is about (default: from the
    sweep definitions, tables.question). ``improvements``: pairs of group names whose probability of improvement
    on ``metric`` is reported. ``command``: the compare command, for the report's Reproduce section."""
    out = Path(out)
    _unique_names(runs)
    keys_swept, source = question(runs, swept)
    finished = [r for r in runs if r.finished]
    axis, axis_note = resolve_axis(runs, x)
    metrics = eval_metrics(finished)
    budget = equal_budget(finished, axis, metrics[0]) if finished else math.nan
    # The confound check runs on the finished runs, grouped by the swept keys; config keys it finds split groups.
    base_rows = run_rows(finished, keys_swept, axis, budget, metrics)
    labels = {r.name: group_label(row, group_keys(keys_swept)) for r, row in zip(finished, base_rows)}
    confounds = confound_check.check(finished, keys_swept, labels)
    extra = [k for k in confounds.keys if k not in keys_swept]
    rows = run_rows(runs, keys_swept, axis, budget, metrics, extra)
    aggs = aggregate(rows, keys_swept, metrics, extra)
    gkeys = group_keys(keys_swept, extra)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", rows)
    write_csv(out / "aggregated.csv", csv_rows(aggs))
    where = "at the end of training" if axis == "steps" and not finished else f"at {format_budget(budget, axis)}"
    plot_frontier(aggs, runs, out / "frontier.png", title, where=where)
    by_label: dict[str, list[RunRecord]] = {}
    for r, row in zip(runs, rows):
        if r.finished:
            by_label.setdefault(group_label(row, gkeys), []).append(r)
    plot_curves(list(by_label.items()), out / "curves.png", title, axis)
    result: dict[str, Any] = {
        "rows": rows, "aggregated": aggs, "swept": keys_swept, "question_source": source, "group_keys": gkeys,
        "metrics": metrics, "axis": axis, "axis_note": axis_note, "budget": budget, "confounds": confounds,
        "improvements": [improvement(aggs, a, b, metric) for a, b in improvements]}
    result["report"] = report_markdown(result, runs, title, command)
    (out / "report.md").write_text(result["report"])
    result["files"] = {n: out / n for n in FILES}
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_exp.compare", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="run folders and/or folders holding runs (a multirun sweep dir)")
    parser.add_argument("--out", help="output folder (default: <the one folder given>/compare, else ./compare)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (wandb.Api)")
    parser.add_argument("--group", help="with --wandb: only the runs of this W&B group (a Hydra multirun)")
    parser.add_argument("--sweep", help="with --wandb: only the runs of this W&B sweep id (sweeps/wandb_*.yaml)")
    parser.add_argument("--title", help="title of the plots and report")
    parser.add_argument("--x", default=AUTO, choices=[AUTO, *AXES],
                        help="budget axis of the curves and of the equal-budget table (default auto: samples when "
                             "every run logs budget/samples, else steps)")
    parser.add_argument("--swept", metavar="KEY[,KEY]",
                        help="the keys the comparison is about (default: what the runs' sweeps swept); every other "
                             "difference is reported as a confound")
    parser.add_argument("--improvement", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="the probability that a run of group A beats one of group B (repeatable; a group by "
                             "its label or by words of it, e.g. grpo rloo)")
    parser.add_argument("--metric", default="eval/reward_mean", help="the metric of --improvement")
    parser.add_argument("--report", action="store_true",
                        help="print the whole report (report.md), and with --wandb log the tables to W&B")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb):
        parser.error("give run/sweep folders, or --wandb ENTITY/PROJECT [--group G], not both")
    try:
        return _run(args, argv)
    except (FileNotFoundError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> int:
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
    command = "python -m rlhf_exp.compare " + " ".join(shlex.quote(a) for a in
                                                      (sys.argv[1:] if argv is None else argv))
    swept = [k.strip() for k in args.swept.split(",") if k.strip()] if args.swept else None
    try:
        result = compare(runs, out, title, x=args.x, swept=swept, improvements=[tuple(p) for p in args.improvement],
                         metric=args.metric, command=command)
    except BudgetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warnings = result["confounds"].warnings()
    if warnings:
        bar = "!" * 100
        print(f"{bar}\n[compare] WARNING: the runs differ in {len(warnings)} way(s) besides the swept keys "
              f"({', '.join(result['swept']) or 'none'}):", file=sys.stderr)
        for w in warnings:
            print(f"[compare]   {w}", file=sys.stderr)
        print(bar, file=sys.stderr)
    if result["axis_note"]:
        print(f"[compare] {result['axis_note']}", file=sys.stderr)
    if args.report:
        print(result["report"])
    else:
        print(_tables_text(result))
    if args.report and args.wandb:
        url = log_to_wandb(args.wandb, args.group, title, result)
        print(f"[compare] tables logged to W&B{f': {url}' if url else ''}")
    print(f"Wrote {', '.join(str(p) for p in result['files'].values())}")
    return 0


def _tables_text(result: dict[str, Any]) -> str:
    """What is printed without --report: the runs, the groups (when one has several seeds), improvements."""
    rows, aggs, axis = result["rows"], result["aggregated"], result["axis"]
    text = [f"{len(rows)} runs, {sum(r['status'] == FINISHED for r in rows)} finished; swept: "
            f"{', '.join(result['swept']) or '(nothing differs)'}; values at {format_budget(result['budget'], axis)}",
            "", "## Runs", "", runs_markdown(rows, axis), ""]
    if any(a["n"] > 1 for a in aggs):
        text += ["## Over seeds (mean [95% bootstrap CI])", "",
                 aggregated_markdown(aggs, result["group_keys"], result["metrics"], axis, result["confounds"].keys),
                 ""]
    if result["improvements"]:
        text += ["## Probability of improvement", "", improvement_markdown(result["improvements"]), ""]
    failed = [row for row in rows if row["status"] != FINISHED]
    if failed:
        text += ["## Not finished", ""] + [f"- {row['run']}: {row['status']}" for row in failed] + [""]
    return "\n".join(text)
