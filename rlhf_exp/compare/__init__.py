"""``python -m rlhf_exp.compare``: put runs side by side, from their folders or from W&B, with intervals over seeds,
at an equal budget, after a check for confounds.

Usage::

    python -m rlhf_exp.compare multirun/2026-11-22/10-00-00                 # a sweep folder (or several)
    python -m rlhf_exp.compare multirun/2026-11-22/10-00-00 --report --improvement grpo rloo --x samples
    python -m rlhf_exp.compare outputs/2026-11-22/10-00-00_objective=grpo outputs/... --out cmp/ --swept objective
    python -m rlhf_exp.compare --wandb my-entity/rlhf_exp --group multirun/2026-11-22/10-00-00 --report
    python -m rlhf_exp.compare --wandb my-entity/rlhf_exp --sweep abc123xy                  # a W&B sweep

Writes into ``--out`` (default: ``<the one folder given>/compare``, else ``./compare``): ``runs.csv`` (one row per
run), ``aggregated.csv`` (runs that differ only by seed grouped: mean, 95% bootstrap interval, IQM from 5 seeds),
``frontier.png`` (reward vs KL at the equal budget, interval error bars), ``curves.png`` (eval reward and KL
against ``--x``: steps, samples, tokens, flops or time, with interval bands) and ``report.md`` (the question, the
tables, the plots, the confounds, the environment and the commands that reproduce it). docs/compare.md has the
definitions.

The package, by concern: ``runs`` (loading run folders and W&B runs), ``budget`` (the budget axes), ``stats``
(bootstrap intervals, IQM, probability of improvement), ``tables`` (the question, rows, groups), ``confounds``
(config and environment differences), ``plots`` (frontier with its label placement solver, curves), ``report``
(markdown, CSV, report.md, the W&B table) and ``cli`` (the driver and the command line).
"""
from rlhf_exp.compare.cli import compare, main
from rlhf_exp.compare.plots import _overlap, place_labels, plot_curves, plot_frontier  # noqa: F401 (tests use _overlap)
from rlhf_exp.compare.report import markdown_table, write_csv
from rlhf_exp.compare.runs import (FINISHED, RunRecord, find_run_dirs, load_run_dir, load_wandb_runs,
                                   record_from_wandb_run, short_names)
from rlhf_exp.compare.stats import iqm, mean_ci, probability_of_improvement, probability_of_improvement_ci
from rlhf_exp.compare.tables import aggregate, group_label, question, run_rows, swept_keys

__all__ = ["FINISHED", "RunRecord", "aggregate", "compare", "find_run_dirs", "group_label", "iqm", "load_run_dir",
           "load_wandb_runs", "main", "markdown_table", "mean_ci", "place_labels", "plot_curves", "plot_frontier",
           "probability_of_improvement", "probability_of_improvement_ci", "question", "record_from_wandb_run",
           "run_rows", "short_names", "swept_keys", "write_csv"]
