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
from rlhf_exp.compare.cli import compare, main
from rlhf_exp.compare.plots import _overlap, place_labels, plot_curves, plot_frontier
from rlhf_exp.compare.report import markdown_table, write_csv
from rlhf_exp.compare.runs import (FINISHED, RunRecord, find_run_dirs, load_run_dir, load_wandb_runs,
                                   record_from_wandb_run, short_names)
from rlhf_exp.compare.tables import aggregate, group_label, run_rows, swept_keys

__all__ = ["FINISHED", "RunRecord", "aggregate", "compare", "find_run_dirs", "group_label", "load_run_dir",
           "load_wandb_runs", "main", "markdown_table", "place_labels", "plot_curves", "plot_frontier",
           "record_from_wandb_run", "run_rows", "short_names", "swept_keys", "write_csv"]
