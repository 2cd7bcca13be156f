"""Sweeps: run-folder names, W&B group and tags of multirun jobs, failed jobs, the ready sweep configs, and
``python -m rlhf_exp.compare`` on a real (tiny) multirun."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf_exp.config import CONFIG_DIR, job_dirname, path_safe
from rlhf_exp.tracking import override_tags, sweep_group
from tests.conftest import compose

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The smallest real run: 1 step of 4 sequences, 4 eval prompts, 4-token responses.
TINY = ["train.batch_size=4", "train.mini_batch_size=4", "train.epochs=1", "dataset.train_size=64",
        "dataset.eval_size=4", "eval.batch_size=4", "eval.every=0", "generation.max_new_tokens=4",
        "generation.min_new_tokens=2", "train.save_model=false"]

# Runs the CLI entry point with wandb.init wrapped: each W&B run's group and tags (read from the run object that
# the real, offline wandb.init returned) are appended to $RLHF_TEST_WANDB_LOG.
WRAPPED_MAIN = r"""
import json, os, sys
import wandb
_real_init = wandb.init
def _init(*args, **kwargs):
    run = _real_init(*args, **kwargs)
    with open(os.environ["RLHF_TEST_WANDB_LOG"], "a") as f:
        f.write(json.dumps({"group": run.group, "tags": list(run.tags), "dir": kwargs.get("dir")}) + "\n")
    return run
wandb.init = _init
from rlhf_exp.__main__ import main
main()
"""


# ------------------------------------------------------------------------------------------------- names
def test_job_dirname_numbers_jobs_and_appends_overrides():
    assert job_dirname(3, "kl.kl_coef=0.1,seed=0") == "003_kl.kl_coef=0.1,seed=0"
    assert job_dirname(1234, "seed=1") == "1234_seed=1"
    assert job_dirname("10-00-00", "objective=grpo,kl=fixed") == "10-00-00_objective=grpo,kl=fixed"
    assert job_dirname("10-00-00", "") == "10-00-00"


def test_path_safe_keeps_one_path_component_and_distinct_names():
    assert path_safe("model.path=/data/gpt2,train.adam_betas=[0.9,0.95]") == \
        "model.path=_data_gpt2,train.adam_betas=_0.9,0.95_"
    a, b = "x=" + "1" * 300, "x=" + "1" * 299 + "2"
    sa, sb = path_safe(a), path_safe(b)
    assert len(sa) == len(sb) == 150 and sa != sb and "/" not in sa


def test_override_tags_skip_logger_settings_and_fit_wandb_limits():
    tags = override_tags(["kl.kl_coef=0.1", "seed=0", "logger=wandb", "logger.group=g", "run_name=x",
                          "+extra=1", "kl.kl_coef=0.1", "a=" + "b" * 100], extra=["baseline"])
    assert tags == ["baseline", "kl.kl_coef=0.1", "seed=0", "extra=1", "a=" + "b" * 62]


def test_sweep_group_is_the_sweep_folder_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_group(str(tmp_path / "multirun" / "2026-11-22" / "10-00-00")) == "multirun/2026-11-22/10-00-00"
    assert sweep_group("/elsewhere/" + "d" * 200) == ("/elsewhere/" + "d" * 200)[-128:]


# ------------------------------------------------------------------------------------------------- configs
def _compose_with_hydra(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_kl_grid_sweeps_both_controllers_and_the_command_line_can_narrow_it():
    cfg = _compose_with_hydra(["sweep=kl_grid"])
    assert cfg.objective.name == "ppo" and cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"kl": "fixed,adaptive", "kl.kl_coef": "0.01,0.05,0.2,0.5"}


def test_objective_sweeps_name_existing_objectives():
    cfg = _compose_with_hydra(["sweep=objectives"])
    names = cfg.hydra.sweeper.params.objective.split(",")
    assert sorted(names) == sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml")
                                   if OmegaConf.load(p).objective.kind == "online")
    with_offline = _compose_with_hydra(["sweep=objectives_with_offline"]).hydra.sweeper.params.objective.split(",")
    assert set(with_offline) == set(names) | {"sft", "dpo", "kto"}


def test_optuna_sweep_uses_the_optuna_plugin_over_lr_and_kl_coef():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose_with_hydra(["sweep=optuna"])
    sw = cfg.hydra.sweeper
    assert "OptunaSweeper" in sw._target_ and sw.direction == "maximize"
    assert set(sw.params) == {"train.lr", "kl.kl_coef"}


def test_slurm_launcher_config_composes_with_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1


def test_wandb_sweep_yaml_expands_to_valid_hydra_overrides():
    """The agent's own expansion of the command (wandb's create_sweep_command_args, then the macro substitution
    of wandb_agent) gives a command line whose overrides compose with the real config."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = OmegaConf.to_container(OmegaConf.load(REPO / "sweeps" / "wandb_kl_grid.yaml"))
    assert (REPO / spec["program"]).exists()
    args = {name: {"value": p["values"][-1]} for name, p in spec["parameters"].items()}
    sweep_vars = create_sweep_command_args({"args": args})
    sweep_vars.update(interpreter=["python"], env=["/usr/bin/env"], program=[spec["program"]])
    command = []
    for c in spec["command"]:
        command += sweep_vars[c[2:-1]] if c.startswith("${") else [c]
    assert command[:4] == ["/usr/bin/env", "python", "-m", "rlhf_exp"]
    cfg = compose(command[4:])
    assert cfg.kl.controller == "fixed" and cfg.kl.kl_coef == 0.5 and cfg.seed == 2


# ------------------------------------------------------------------------------------------------- multirun
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A real multirun of 4 jobs (seed=0,1 x train.steps=1,-1; the train.steps=-1 jobs fail validation), W&B offline."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir, wandb_log = tmp / "sweep", tmp / "wandb_runs.jsonl"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RLHF_TEST_WANDB_LOG": str(wandb_log),
           "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-c", WRAPPED_MAIN, "-m", "logger=wandb", "seed=0,1", "train.steps=1,-1", *TINY,
           f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    return {"proc": proc, "dir": sweep_dir, "wandb_log": wandb_log, "cwd": tmp}


def test_multirun_keeps_going_after_a_failed_job_and_exits_nonzero(tiny_sweep):
    proc, sweep_dir = tiny_sweep["proc"], tiny_sweep["dir"]
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [j.name[:4] for j in jobs] == ["000_", "001_", "002_", "003_"]
    assert OmegaConf.load(jobs[1] / ".hydra" / "overrides.yaml")[1:3] == ["seed=0", "train.steps=-1"]
    statuses = {j.name[:3]: json.loads((j / "summary.json").read_text())["status"] for j in jobs}
    assert statuses["000"] == statuses["002"] == "finished", proc.stderr[-3000:]
    for failed in ("001", "003"):
        assert statuses[failed] == ("failed: ConfigError: train.steps must be an integer >= 0 (0 = evaluate only), "
                                    "got -1.")
    assert proc.stderr.count("not started: train.steps must be an integer >= 0") == 2
    failed_summary = json.loads((jobs[1] / "summary.json").read_text())
    assert failed_summary["objective"] == "ppo"
    # The sweep ends (after Hydra's report of the failed job) with its folder and the compare command for it.
    assert proc.stdout.strip().splitlines()[-2:] == [
        "[rlhf_exp] sweep folder: sweep (4 jobs: 2 finished, 2 failed)",
        "[rlhf_exp] compare the runs: python -m rlhf_exp.compare sweep"]
    assert not list(sweep_dir.glob("*/*.log")), "no empty per-job log files"


def test_multirun_jobs_share_a_wandb_group_and_are_tagged_with_their_overrides(tiny_sweep):
    runs = [json.loads(line) for line in tiny_sweep["wandb_log"].read_text().splitlines()]
    assert len(runs) == 2  # the two jobs that got past validation
    expected_group = "sweep"  # the sweep folder, relative to the working directory of the sweep
    assert {r["group"] for r in runs} == {expected_group}
    for r, seed in zip(runs, (0, 1)):
        assert f"seed={seed}" in r["tags"] and "train.steps=1" in r["tags"]
        assert not any(t.startswith("logger") for t in r["tags"])
    resolved = OmegaConf.load(Path(runs[0]["dir"]) / "config_resolved.yaml")
    assert resolved.logger.group == expected_group and "seed=0" in resolved.logger.tags


def test_logger_group_overrides_the_derived_group(tmp_path):
    """In-process: the group and tags a multirun job gives W&B, derived and set with logger.group."""
    from hydra.core.hydra_config import HydraConfig

    from rlhf_exp.__main__ import _group_and_tags

    for extra, group in (([], sweep_group(str(tmp_path))), (["logger.group=my-sweep"], "my-sweep")):
        overrides = ["seed=3", *extra]
        hydra_cfg = _compose_with_hydra([*overrides, "hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}"])
        HydraConfig.instance().set_config(hydra_cfg)
        try:
            cfg = compose(overrides)
            _group_and_tags(cfg)
        finally:
            HydraConfig.instance().cfg = None
        assert cfg.logger.group == group and list(cfg.logger.tags) == ["seed=3"]


def test_compare_writes_tables_and_readable_plots(tiny_sweep, tmp_path, capsys):
    import matplotlib.image

    from rlhf_exp.compare import main

    out = tmp_path / "cmp"
    assert main([str(tiny_sweep["dir"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["000", "001", "002", "003"]
    assert [r["seed"] for r in rows] == ["0", "0", "1", "1"]
    assert [r["train.steps"] for r in rows] == ["1", "-1", "1", "-1"]
    assert [r["status"] == "finished" for r in rows] == [True, False, True, False]
    assert all(r["objective"] == "ppo" and r["kl"] == "adaptive" for r in rows)
    for r in (rows[0], rows[2]):
        summary = json.loads((Path(r["path"]) / "summary.json").read_text())
        assert float(r["eval/reward_mean"]) == pytest.approx(summary["eval/reward_mean_end"])
        assert float(r["eval/kl"]) == pytest.approx(summary["eval/kl_end"])
        assert float(r["wall_s"]) > 0 and float(r["samples_per_s"]) > 0
    with open(out / "aggregated.csv") as f:
        agg = {a["train.steps"]: a for a in csv.DictReader(f)}
    assert agg["1"]["n"] == "2" and agg["1"]["not_finished"] == "0"
    assert agg["-1"]["n"] == "0" and agg["-1"]["not_finished"] == "2"
    finished = [float(r["eval/reward_mean"]) for r in (rows[0], rows[2])]
    assert float(agg["1"]["eval/reward_mean_mean"]) == pytest.approx(sum(finished) / 2)
    assert "## Over seeds" in printed and "failed: ConfigError" in printed
    for name in ("frontier.png", "curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500


def test_summary_records_the_environment(tiny_sweep):
    """A real run's summary.json (finished or refused at validation) holds the environment it ran in."""
    import torch

    for job in sorted(p for p in tiny_sweep["dir"].iterdir() if p.is_dir()):
        env = json.loads((job / "summary.json").read_text())["environment"]
        assert env["packages"]["torch"] == torch.__version__ and env["world_size"] == 1
        assert env["device"]["type"] == "cpu" and set(env["git"]) == {"commit", "dirty"}


def test_compare_explains_a_folder_without_runs(tmp_path, capsys):
    from rlhf_exp.compare import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "No run folder (one with summary.json, metrics.jsonl or .hydra/) under" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_compare_reads_wandb_public_api_runs(tmp_path):
    """The W&B path (cannot reach W&B here): a run object with the attributes of wandb.apis.public.Run."""
    from types import SimpleNamespace

    from rlhf_exp.compare import compare, record_from_wandb_run

    def fake_run(name, coef, seed, reward, kl, state="finished", status="finished"):
        history = [{"_step": 0, "eval/reward_mean": 0.0, "eval/kl": 0.0},
                   {"_step": 10, "eval/reward_mean": reward, "eval/kl": kl}]

        def scan_history(keys=None):
            return [row for row in history if all(k in row for k in keys)] if "eval/kl" in keys else \
                [{"_step": 5, "perf/samples_per_s": 20.0}]
        summary = {"status": status, "objective": "ppo", "kl_controller": "fixed", "eval/reward_mean_end": reward,
                   "eval/kl_end": kl, "eval/reward_mean_start": 0.0, "wall_s": 12.0} if status else {}
        return SimpleNamespace(name=name, state=state, url=f"https://wandb.example/{name}",
                               tags=["objective=ppo", f"kl.kl_coef={coef}", f"seed={seed}"],
                               config={"kl": {"controller": "fixed", "kl_coef": coef}, "seed": seed},
                               summary_metrics=summary, scan_history=scan_history)

    runs = [record_from_wandb_run(r) for r in (fake_run("a", 0.1, 0, 1.0, 2.0), fake_run("b", 0.1, 1, 3.0, 4.0),
                                               fake_run("c", 0.5, 0, 0.5, 1.0, state="crashed", status=None))]
    assert runs[2].status == "no summary (W&B state crashed)"
    result = compare(runs, tmp_path)
    assert result["swept"] == ["kl.kl_coef", "seed"]
    agg = {a["kl.kl_coef"]: a for a in result["aggregated"]}
    assert agg["0.1"]["n"] == 2 and agg["0.1"]["eval/reward_mean_mean"] == 2.0
    assert agg["0.1"]["eval/kl_std"] == pytest.approx(2 ** 0.5)
    assert agg["0.5"]["n"] == 0 and agg["0.5"]["not_finished"] == 1
    assert result["rows"][0]["samples_per_s"] == 20.0


def test_optuna_sweep_runs_trials_and_maximises_the_returned_reward(tmp_path):
    """Two real Optuna trials: each job's return value (final eval/reward_mean) reaches the study (about 10 s on
    the idle 2-core machine)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "optuna"
    cmd = [sys.executable, "-m", "rlhf_exp", "-m", "sweep=optuna", "hydra.sweeper.n_trials=2", "logger=none",
           "train.steps=1", *TINY, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    rewards = [json.loads(p.read_text())["eval/reward_mean_end"] for p in sorted(sweep_dir.glob("*/summary.json"))]
    assert len(rewards) == 2 and result.best_value == pytest.approx(max(rewards))
    assert set(result.best_params) == {"train.lr", "kl.kl_coef"}
