"""``python -m rlhf_exp.compare`` on synthetic run folders (laid out as rlhf_exp writes them; no training): the
statistics against hand-computed values and scipy, equal-budget tables, the confound check, the report, the W&B
table, and the environment in summary.json."""
from __future__ import annotations

import copy
import csv
import json
import math
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlhf_exp.compare import main
from rlhf_exp.compare import stats
from rlhf_exp.environment import environment, git_state
from tests.conftest import compose

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------- statistics
def test_iqm_by_hand_and_as_scipy_trims():
    from scipy.stats import trim_mean

    assert stats.iqm([1, 2, 3, 4, 100]) == 3.0              # floor(5/4) = 1 cut at each end: mean(2, 3, 4)
    assert stats.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5         # 2 cut at each end: mean(3, 4, 5, 6)
    assert stats.iqm([5, 1, 9, 3, 7, 2, 8, 4, 6]) == pytest.approx(5.0)  # 2 cut: mean(3..7)
    assert math.isnan(stats.iqm([1, 2, 3, 4]))                # fewer than 5 seeds: not reported
    x = np.random.default_rng(0).normal(size=11)
    assert stats.iqm(x) == pytest.approx(trim_mean(x, 0.25))
    # rliable 1.2's metrics.aggregate_iqm gives 3.0 for [1, 2, 3, 4, 100] as well (checked outside the suite:
    # rliable cannot be installed beside pandas 3, see stats.py)


def test_probability_of_improvement_by_hand_and_as_mann_whitney_u():
    from scipy.stats import mannwhitneyu

    # pairs (x, y): 1 beats 0; 2 ties 2, 2 and beats 0; 3 beats all three: (1 + 2 + 3) / 9
    assert stats.probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)   # rliable: 0.6667
    assert stats.probability_of_improvement([1, 2, 3], [1, 2, 3]) == 0.5
    assert stats.probability_of_improvement([5, 6], [1, 2, 3]) == 1.0
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, size=7).astype(float), rng.integers(0, 4, size=5).astype(float)   # many ties
    p = stats.probability_of_improvement(x, y)
    assert p == pytest.approx(mannwhitneyu(x, y).statistic / (7 * 5))
    assert p + stats.probability_of_improvement(y, x) == pytest.approx(1.0)
    # every resample of two separated groups gives 1
    assert stats.probability_of_improvement_ci([5, 6, 7], [1, 2, 3]) == (1.0, 1.0, 1.0)
    assert math.isnan(stats.probability_of_improvement_ci([5], [1, 2])[1])   # one run: no interval


def test_mean_ci_percentile_bootstrap():
    # 3 seeds: each extreme value is a resample's mean with probability 1/27 > 2.5%: the interval is [min, max]
    assert stats.mean_ci([1.0, 2.0, 3.0]) == (2.0, 1.0, 3.0)
    assert stats.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = stats.mean_ci([4.0])
    assert mean == 4.0 and math.isnan(low) and math.isnan(high)
    # against a plain numpy percentile bootstrap of the same data (Monte Carlo agreement)
    x = np.random.default_rng(2).normal(size=12)
    idx = np.random.default_rng(3).integers(0, 12, size=(40_000, 12))
    ref_low, ref_high = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    mean, low, high = stats.mean_ci(x)
    assert mean == pytest.approx(x.mean())
    assert low == pytest.approx(ref_low, abs=0.03) and high == pytest.approx(ref_high, abs=0.03)
    assert stats.mean_ci(x) == (mean, low, high)      # a fixed generator: the same interval every time
    s = stats.summarize(list(x[:6]) + [math.nan])
    assert s["n"] == 6 and s["std"] == pytest.approx(np.std(x[:6], ddof=1)) and not math.isnan(s["iqm"])


# ------------------------------------------------------------------------------------------------- run folders
def _resolved(overrides: Sequence[str]) -> dict[str, Any]:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


ENV = {**environment(1), "git": {"commit": "c0ffee" * 6 + "c0ff", "dirty": False}}  # as from a clean checkout


def make_run(folder: Path, overrides: Sequence[str], evals: Sequence[tuple[int, float, float]],
             budgets: Optional[dict[str, Sequence[float]]] = None, env: Optional[dict] = None,
             config: Optional[dict] = None, status: str = "finished") -> Path:
    """A run folder as rlhf_exp writes it: .hydra/{overrides,hydra}.yaml, config_resolved.yaml (the real composed
    config), metrics.jsonl (``evals``: (step, reward, kl); ``budgets``: {key: value at each eval step}) and
    summary.json with its environment."""
    folder.mkdir(parents=True)
    cfg = config or _resolved(overrides)
    (folder / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(list(overrides)), folder / ".hydra" / "overrides.yaml")
    choices = {"objective": cfg["objective"]["name"], "kl": cfg["kl"]["controller"], "model": "tiny_reviews",
               "dataset": "tiny_reviews", "reward_model": "tiny_sentiment", "logger": "none"}
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), folder / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(cfg), folder / "config_resolved.yaml")
    with open(folder / "metrics.jsonl", "w") as f:
        for i, (step, reward, kl) in enumerate(evals):
            row = {"step": step, "eval/reward_mean": reward, "eval/kl": kl, "perf/samples_per_s": 10.0}
            row.update({k: v[i] for k, v in (budgets or {}).items()})
            f.write(json.dumps(row) + "\n")
    summary = {"status": status, "objective": cfg["objective"]["name"], "kl_controller": cfg["kl"]["controller"],
               "steps": evals[-1][0], "wall_s": 5.0, "num_processes": 1, "eval/reward_mean_start": evals[0][1],
               "eval/reward_mean_end": evals[-1][1], "eval/kl_start": evals[0][2], "eval/kl_end": evals[-1][2],
               "environment": env or ENV}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def make_sweep(root: Path, task: Sequence[str]) -> Path:
    root.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": list(task)}, "sweeper": {"params": None}}}),
                   root / "multirun.yaml")
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


COMMON = ["train.steps=4", "logger=none"]


def _grpo_rloo_sweep(tmp_path: Path, budgets: bool = True, env_of: Optional[dict] = None) -> Path:
    """objective=grpo,rloo x seed=0,1: grpo's 4 steps reach 64 samples, rloo's 32 (as if it generated fewer)."""
    sweep = make_sweep(tmp_path / "sweep", ["objective=grpo,rloo", "seed=0,1", *COMMON])
    job = 0
    for objective, per_step in (("grpo", 16), ("rloo", 8)):
        for seed in (0, 1):
            evals = [(0, 0.5, 0.0), (2, 1.0 + seed + (objective == "rloo"), 0.1), (4, 2.0 + seed, 0.2)]
            b = {"budget/samples": [0, 2 * per_step, 4 * per_step], "budget/wall_s": [0, 1.0 + 0.5 * seed, 2.0 + seed]} \
                if budgets else None
            make_run(sweep / f"{job:03d}_objective={objective},seed={seed}", [f"objective={objective}",
                     f"seed={seed}", *COMMON], evals, b, env=(env_of or {}).get(job))
            job += 1
    return sweep


# ------------------------------------------------------------------------------------------------- budgets
def test_equal_budget_table_takes_each_runs_last_eval_at_or_before_it(tmp_path, capsys):
    sweep = _grpo_rloo_sweep(tmp_path)
    out = tmp_path / "cmp"
    assert main([str(sweep), "--out", str(out)]) == 0          # auto: every run logs budget/samples
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err
    rows = {r["run"]: r for r in _csv(out / "runs.csv")}
    # the largest budget all runs reached: 32 samples (rloo's end); grpo reached it at step 2
    assert {r["at"] for r in rows.values()} == {"32.0"}
    assert [float(rows[n]["eval/reward_mean"]) for n in ("000", "001", "002", "003")] == [1.0, 2.0, 2.0, 3.0]
    agg = {a["objective"]: a for a in _csv(out / "aggregated.csv")}
    assert float(agg["grpo"]["eval/reward_mean_mean"]) == 1.5 and float(agg["rloo"]["eval/reward_mean_mean"]) == 2.5
    assert (float(agg["grpo"]["eval/reward_mean_ci_low"]), float(agg["grpo"]["eval/reward_mean_ci_high"])) == (1, 2)
    # at equal steps the same runs rank the other way
    assert main([str(sweep), "--out", str(out), "--x", "steps"]) == 0
    agg = {a["objective"]: a for a in _csv(out / "aggregated.csv")}
    assert float(agg["grpo"]["eval/reward_mean_mean"]) == 2.5 and float(agg["rloo"]["eval/reward_mean_mean"]) == 2.5
    # time: seed 0's runs end at 2 s, seed 1's at 3 s, with their step-2 evaluation at 1.5 s
    assert main([str(sweep), "--out", str(out), "--x", "time"]) == 0
    assert [r["at"] for r in _csv(out / "runs.csv")] == ["2.0", "1.5", "2.0", "1.5"]
    report = (out / "report.md").read_text()
    assert "compared at 2.0 s (`budget/wall_s`" in report


def test_runs_without_budgets_are_compared_at_equal_steps_or_refused_by_name(tmp_path, capsys):
    sweep = _grpo_rloo_sweep(tmp_path, budgets=False)
    out = tmp_path / "cmp"
    assert main([str(sweep), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "compared at equal training steps: 4 of the 4 finished runs do not log budget/samples" in err
    assert {r["at"] for r in _csv(out / "runs.csv")} == {"4.0"}
    assert main([str(sweep), "--out", str(out), "--x", "flops"]) == 2
    err = capsys.readouterr().err
    assert "--x flops: 4 of the 4 finished runs do not log budget/flops (000, 001, 002, 003)" in err
    assert "Compare those runs with --x steps." in err


# ------------------------------------------------------------------------------------------------- confounds
def test_two_runs_that_differ_in_batch_size_are_named_loudly(tmp_path, capsys):
    a = make_run(tmp_path / "a", ["objective=grpo", "train.batch_size=16", *COMMON], [(0, 0.5, 0.0), (4, 2.0, 0.2)])
    b = make_run(tmp_path / "b", ["objective=rloo", "train.batch_size=32", *COMMON], [(0, 0.5, 0.0), (4, 3.0, 0.3)])
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "WARNING: the runs differ in 1 way(s) besides the swept keys (objective)" in err
    assert "config train.batch_size: 16 (a); 32 (b)" in err
    report = (out / "report.md").read_text()
    assert "**WARNING: 1 difference(s) besides the swept keys and the seed.**" in report
    assert "- config train.batch_size: 16 (a); 32 (b)" in report
    assert "| objective | kl | train.batch_size (!) | seeds |" in report
    # naming the batch size as part of the question makes it a column, not a confound
    assert main([str(a), str(b), "--out", str(out), "--swept", "objective,train.batch_size"]) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_keys_the_swept_objective_sets_are_not_confounds(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", ["objective=ppo,grpo", *COMMON])
    make_run(sweep / "000_objective=ppo", ["objective=ppo", *COMMON], [(0, 0.5, 0.0), (4, 2.0, 0.2)])
    make_run(sweep / "001_objective=grpo", ["objective=grpo", *COMMON], [(0, 0.5, 0.0), (4, 2.5, 0.2)])
    out = tmp_path / "cmp"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "- train.epochs: 4 (000); 1 (001)" in report.split("Set by the swept choices")[1]


def test_a_run_whose_config_differs_from_its_sweep_is_named_even_within_a_group(tmp_path, capsys):
    sweep = _grpo_rloo_sweep(tmp_path)
    cfg_file = next(sweep.glob("001_*")) / "config_resolved.yaml"
    cfg = OmegaConf.load(cfg_file)
    cfg.train.lr = 1.0e-3
    OmegaConf.save(cfg, cfg_file)
    assert main([str(sweep), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert "config train.lr: 0.0003 (000, 002, 003); 0.001 (001)  <- differs between seeds of one setting" in err
    agg = _csv(tmp_path / "cmp" / "aggregated.csv")
    assert sorted((a["objective"], a["train.lr"], a["n"]) for a in agg) == [
        ("grpo", "0.0003", "1"), ("grpo", "0.001", "1"), ("rloo", "0.0003", "2")]   # never averaged together


def test_environment_differences_are_named(tmp_path, capsys):
    other = copy.deepcopy(ENV)
    other["packages"]["transformers"] = "5.24.0"
    other["git"] = {"commit": "0" * 40, "dirty": True}
    sweep = _grpo_rloo_sweep(tmp_path, env_of={3: other})
    out = tmp_path / "cmp"
    assert main([str(sweep), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"environment packages.transformers: {ENV['packages']['transformers']} (000, 001, 002); 5.24.0 (003)" \
        in err
    assert "environment git.commit:" in err
    report = (out / "report.md").read_text()
    assert "with uncommitted changes in 1 run(s): 003" in report


# ------------------------------------------------------------------------------------------------- report
def test_report_is_self_contained(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", ["objective=grpo,rloo", "seed=range(5)", *COMMON])
    rewards = {"grpo": [1.0, 2.0, 3.0, 4.0, 100.0], "rloo": [0.5, 1.5, 2.5, 3.5, 4.5]}
    job = 0
    for objective in ("grpo", "rloo"):
        for seed in range(5):
            make_run(sweep / f"{job:03d}", [f"objective={objective}", f"seed={seed}", *COMMON],
                     [(0, 0.5, 0.0), (4, rewards[objective][seed], 0.1 * seed)])
            job += 1
    out = tmp_path / "cmp"
    assert main([str(sweep), "--out", str(out), "--report", "--improvement", "grpo", "rloo"]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert report in printed
    for section in ("## Question", "## Results at equal budget (mean [95% bootstrap CI] over seeds)",
                    "## Probability of improvement", "## Runs", "## Plots", "## Confounds", "## Environment",
                    "## Reproduce"):
        assert section in report
    assert "- swept: `objective` = grpo, rloo (swept in the sweep " in report
    assert "- seeds: 0, 1, 2, 3, 4 (5 finished per group)" in report
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (out / image).is_file()              # relative links to the PNGs written beside it
    # IQM from 5 seeds: grpo's outlier 100 is trimmed
    assert "| reward | reward IQM |" in report
    grpo = [line for line in report.splitlines() if line.startswith("| grpo |")][0]
    assert "| 3.000 [" in grpo and "| 22.000 [" in grpo
    # P(grpo > rloo): each grpo value beats the rloo values below it: (1 + 2 + 3 + 4 + 5) / 25
    assert "| grpo adaptive | rloo adaptive | reward | 0.600 [" in report
    assert "python -m rlhf_exp -m objective=grpo,rloo 'seed=range(5)' train.steps=4 logger=none    # " in report
    assert "python -m rlhf_exp objective=rloo seed=4 train.steps=4 logger=none    # 009" in report
    assert f"The code: `{ENV['git']['commit']}`; then `make install`" in report
    assert f"| packages.torch | {ENV['packages']['torch']} | 10 of 10 |" in report


def test_improvement_names_an_unknown_group_and_lists_the_groups(tmp_path, capsys):
    sweep = _grpo_rloo_sweep(tmp_path)
    assert main([str(sweep), "--out", str(tmp_path / "cmp"), "--improvement", "ppo", "rloo"]) == 2
    assert "--improvement 'ppo' matches no group; the groups are: grpo adaptive; rloo adaptive" in \
        capsys.readouterr().err
    assert main([str(sweep), "--out", str(tmp_path / "cmp"), "--improvement", "grpo", "rloo", "--metric",
                 "eval/gold"]) == 2
    assert "--metric eval/gold: not a compared metric; compared: eval/reward_mean, eval/kl, wall_s, samples_per_s" \
        in capsys.readouterr().err


def test_wandb_runs_give_the_same_report_and_the_tables_are_logged(tmp_path, monkeypatch, capsys):
    """The W&B path without network: wandb.Api returns objects shaped like wandb.apis.public.Run, and wandb.init a
    run that records what is logged."""
    import wandb

    def fake_run(name, objective, seed, rewards, samples):
        history = [{"_step": s, "eval/reward_mean": r, "eval/kl": 0.1 * s, "budget/samples": b}
                   for s, r, b in zip((0, 2, 4), rewards, samples)]
        cfg = _resolved([f"objective={objective}", f"seed={seed}", *COMMON])

        def scan_history(keys=None):
            return [row for row in history if all(k in row for k in keys)]
        summary = {"status": "finished", "objective": objective, "kl_controller": "adaptive", "steps": 4,
                   "wall_s": 3.0, "eval/reward_mean_start": rewards[0], "eval/reward_mean_end": rewards[-1],
                   "environment": ENV}
        return SimpleNamespace(name=name, state="finished", url=f"https://wandb.example/{name}",
                               tags=[f"objective={objective}", f"seed={seed}", *COMMON], config=cfg,
                               summary_metrics=summary, scan_history=scan_history)

    runs = [fake_run("g0", "grpo", 0, (0.5, 1.0, 2.0), (0, 32, 64)), fake_run("g1", "grpo", 1, (0.5, 2.0, 3.0),
            (0, 32, 64)), fake_run("r0", "rloo", 0, (0.5, 2.0, 2.0), (0, 16, 32)),
            fake_run("r1", "rloo", 1, (0.5, 3.0, 3.0), (0, 16, 32))]
    logged: dict[str, Any] = {}

    class FakeWandbRun:
        url = "https://wandb.example/compare"

        def __init__(self, **kwargs):
            logged["init"] = kwargs
            self.summary = {}

        def log(self, data):
            logged["log"] = data

        def finish(self):
            logged["summary"] = self.summary

    monkeypatch.setattr(wandb, "Api", lambda: SimpleNamespace(runs=lambda path, filters=None: runs))
    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeWandbRun(**kwargs))
    out = tmp_path / "cmp"
    assert main(["--wandb", "me/rlhf_exp", "--group", "multirun/x", "--out", str(out), "--report",
                 "--improvement", "rloo", "grpo"]) == 0
    printed = capsys.readouterr()
    assert "WARNING" not in printed.err
    report = (out / "report.md").read_text()
    assert "compared at 32 samples" in report and "## Confounds" in report and "## Reproduce" in report
    assert "python -m rlhf_exp objective=grpo seed=0 train.steps=4 logger=none    # g0" in report
    assert logged["init"]["project"] == "rlhf_exp" and logged["init"]["entity"] == "me"
    assert logged["init"]["group"] == "multirun/x" and logged["init"]["job_type"] == "compare"
    table = logged["log"]["compare/aggregated"]
    assert isinstance(table, wandb.Table)
    means = {row[table.columns.index("objective")]: row[table.columns.index("eval/reward_mean_mean")]
             for row in table.data}
    assert means == {"grpo": 1.5, "rloo": 2.5}            # at 32 samples: grpo's step 2, rloo's step 4
    assert set(logged["log"]) == {"compare/aggregated", "compare/runs", "compare/improvement"}
    assert logged["summary"]["compare/report"] == report and logged["summary"]["compare/confounds"] == 0
    assert "[compare] tables logged to W&B: https://wandb.example/compare" in printed.out


# ------------------------------------------------------------------------------------------------- environment
def test_summary_json_records_the_environment(tmp_path):
    from rlhf_exp.tracking import write_summary

    written = write_summary(tmp_path, {"status": "finished", "num_processes": 2})
    env = json.loads((tmp_path / "summary.json").read_text())["environment"]
    assert env == written["environment"]
    assert env["world_size"] == 2 and env["python"].count(".") == 2
    import torch
    import transformers

    assert env["packages"]["torch"] == torch.__version__ and env["packages"]["transformers"] == transformers.__version__
    assert set(env["packages"]) >= {"torch", "transformers", "trl", "accelerate", "datasets", "peft", "vllm"}
    assert env["device"]["type"] in ("cpu", "cuda", "mps") and env["device"]["count"] >= 1
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}    # not a git checkout
