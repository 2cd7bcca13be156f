"""The ``compare`` driver and its command line (``python -m rlhf_exp.compare``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from rlhf_exp.compare.plots import plot_curves, plot_frontier
from rlhf_exp.compare.report import aggregated_markdown, runs_markdown, write_csv
from rlhf_exp.compare.runs import FINISHED, GROUP_KEYS, SEED_KEY, RunRecord, find_run_dirs, load_run_dir, \
    load_wandb_runs, short_names
from rlhf_exp.compare.tables import aggregate, group_label, run_rows, swept_keys

DESCRIPTION = "``python -m rlhf_exp.compare``: put runs side by side, from their folders or from W&B."


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
    parser = argparse.ArgumentParser(prog="python -m rlhf_exp.compare", description=DESCRIPTION,
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
