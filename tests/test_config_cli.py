"""Bad settings through the real entry point: ``python -m rlhf_exp`` refuses them before any model loads, in one
line that names the key, the value and the valid range, with exit code 2 and no run folder left. One case per config
group, and the cases of issue 34 (``train.adam_betas``, ``kl=none kl.kl_coef``, a typo in a composite part)."""
from __future__ import annotations

import pytest

from tests.test_cli import cli

# Small enough that a run which is not refused ends in seconds (so the test fails fast where the check is missing).
TINY = {"train.steps": "1", "train.batch_size": "4", "train.mini_batch_size": "4", "eval.batch_size": "4",
        "dataset.eval_size": "4", "train.checkpoint_every": "0", "train.save_model": "false", "logger": "none"}

CASES = [
    ("objective", ["objective.entropy_coef=-0.1"], "objective.entropy_coef must be >= 0 (0 = off), got -0.1."),
    ("kl", ["kl=adaptive", "kl.target=-4"], "kl.target must be > 0, got -4."),
    ("reward_model", ["reward_model.max_length=0"], "reward_model.max_length must be an integer >= 1, got 0."),
    ("dataset", ["dataset.train_size=0"], "dataset.train_size must be an integer >= 1 or null, got 0."),
    ("generation", ["generation.temperature=inf"], "generation.temperature must be a finite number > 0"),
    ("train", ["train.adam_betas=[1.5,0.9]"], "train.adam_betas must be two numbers in [0, 1), got [1.5, 0.9]."),
    ("eval", ["eval.seed=-1"], "eval.seed must be an integer in [0, 4294967296), got -1."),
    ("model", ["model.lora.dropout=1.5"], "model.lora.dropout must be in [0, 1), got 1.5."),
    ("logger", ["logger=wandb", "logger.init_timeout=0"], "logger.init_timeout must be > 0, got 0."),
    ("kl=none", ["kl=none", "kl.kl_coef=0.5"], "kl.kl_coef must be 0 with kl=none"),
    ("composite-typo", ["reward_model=composite", "reward_model.parts.lenght.weight=0.2"],
     "reward_model.parts has no 'lenght'. Did you mean length (reward_model.parts.length.weight=0.2)?"),
    ("key-of-another-option", ["kl=fixed", "kl.target=3"], "kl.target': kl=fixed has no 'target': target is a "
                                                            "setting of kl=adaptive"),
    ("ignored-setting", ["model.lora.alpha=32"], "model.lora.alpha=32 has no effect here: model.lora.r=0"),
]


@pytest.mark.parametrize("args,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_setting_fails_in_one_line_naming_key_value_and_range(tmp_path, args, message):
    keys = {a.split("=", 1)[0] for a in args}
    proc = cli(*args, *[f"{k}={v}" for k, v in TINY.items() if k not in keys], cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert lines[-1].startswith("[rlhf_exp] error: ") and message in lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
