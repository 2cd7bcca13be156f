"""The three-stage pipeline script on a GPT-2 checkpoint as the hub ships it (no pad token), and the TensorBoard
logger from a plain install."""
import json
import os
import subprocess
import sys
from pathlib import Path

from rlhf_exp.__main__ import run
from tests.conftest import compose
from tests.hub_models import gpt2_hub_dir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["logger=none", "train.steps=1", "train.batch_size=4", "train.mini_batch_size=4", "eval.every=0",
         "dataset.eval_size=4", "dataset.train_size=16", "dataset.offline_train_size=16",
         "dataset.offline_eval_size=8", "generation.max_new_tokens=6"]


def test_pipeline_script_runs_sft_reward_ppo_on_gpt2_without_pad(gpt2_hub_dir, tmp_path):
    out = tmp_path / "pipeline"
    env = {**os.environ, "PYTHON": sys.executable, "SFT_ARGS": f"model.path={gpt2_hub_dir}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "sweeps" / "pipeline.sh"), str(out), *SHORT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no pad token; padding with its EOS token" in proc.stdout
    for stage, key in (("1_sft", "policy_dir"), ("2_reward", "reward_model_dir"), ("3_ppo", "policy_dir")):
        summary = json.loads((out / stage / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 1, (stage, summary)
        assert Path(summary[key]).is_dir()
    eos = json.loads((gpt2_hub_dir / "config.json").read_text())["eos_token_id"]
    assert json.loads((out / "2_reward" / "reward_model" / "config.json").read_text())["pad_token_id"] == eos


def test_tensorboard_logger_writes_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = run(compose(SHORT + ["logger=tensorboard", "train.steps=2", "train.save_model=false"]), tmp_path)
    assert summary["status"] == "finished"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list(tmp_path.iterdir())
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    steps = {e.step for e in acc.Scalars("train/reward_mean")}
    assert steps == {1, 2} and "eval/kl" in acc.Tags()["scalars"]
