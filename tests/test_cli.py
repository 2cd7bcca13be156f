"""``python -m rlhf_exp`` as a user meets it: its --help, one-line errors for runs that cannot start (no traceback,
no run folder left), and W&B falling back to offline when its server cannot be reached."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    base.update({"HOME": str(cwd), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", **(env or {})})
    return subprocess.run([sys.executable, "-m", "rlhf_exp", *args], cwd=cwd, env=base, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_help_lists_the_groups_with_their_options_and_the_examples(tmp_path):
    import rlhf_exp.__main__ as entry
    from rlhf_exp.config import config_groups, group_options

    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "powered by Hydra" not in out and out.startswith("rlhf_exp: RLHF objectives")
    for group in config_groups():
        assert re.search(rf"^{group}: {', '.join(group_options(group))}$", out, re.M), group
    examples = [line.strip() for line in entry.__doc__.splitlines() if line.strip().startswith("python -m")]
    assert len(examples) >= 5
    for line in examples:
        assert line in out, line
    assert "-m sweep=kl_grid" in out and "python -m rlhf_exp.compare" in out and "--multirun" in out
    assert "shell-completion" not in out
    assert not list(tmp_path.glob("outputs")), "--help must not make a run folder"


@pytest.mark.parametrize("args,message", [
    (["objectiv=ppo"], "Unknown config key 'objectiv'"),
    (["+objectiv=ppo"], "Did you mean objective=?"),
    (["train.steps=abc"], "train.steps must be an integer, got 'abc' (a string)"),
])
def test_a_run_that_cannot_start_fails_in_one_line_and_leaves_no_folder(tmp_path, args, message):
    proc = cli(*args, "logger=none", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("[rlhf_exp] error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_online_wandb_without_a_key_names_both_fixes_and_starts_nothing(tmp_path):
    proc = cli("train.steps=0", cwd=tmp_path, env={"WANDB_MODE": "online"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "wandb: " not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "WANDB_MODE=online" in last and "`wandb login`" in last and "logger.mode=offline" in last
    assert not (tmp_path / "outputs").exists()


def test_unreachable_wandb_server_falls_back_to_offline_with_a_notice(tmp_path, capsys, monkeypatch):
    """Credentials but no server (a closed port on loopback): the run logs offline after a notice, at once."""
    import time

    from rlhf_exp.tracking import Tracker, server_reachable

    assert server_reachable("http://127.0.0.1:9", timeout=2) is not None
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_SILENT", "true")
    t0 = time.perf_counter()
    tracker = Tracker(tmp_path, {"kind": "wandb", "project": "p", "mode": None, "init_timeout": 5}, {"a": 1}, "r")
    try:
        assert tracker.wandb_run is not None and tracker.wandb_run.settings.mode == "offline"
        tracker.log({"x": 1.0}, step=1)
    finally:
        tracker.close()
    notice = capsys.readouterr().out
    assert "cannot reach the W&B server http://127.0.0.1:9" in notice and "logging offline" in notice
    assert time.perf_counter() - t0 < 60
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_a_wandb_server_that_never_answers_falls_back_after_init_timeout(tmp_path, capsys, monkeypatch):
    """The port is open (a loopback listener that accepts and never replies): wandb.init times out after
    logger.init_timeout seconds and the run logs offline with a notice."""
    import socket

    from rlhf_exp.tracking import Tracker

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        tracker = Tracker(tmp_path, {"kind": "wandb", "project": "p", "mode": "online", "init_timeout": 5},
                          {"a": 1}, "r")
        try:
            assert tracker.wandb_run.settings.mode == "offline"
        finally:
            tracker.close()
    finally:
        listener.close()
    assert "did not start an online run within 5 s" in capsys.readouterr().out


def test_progress_bar_counter_and_postfix_describe_the_same_step(capsys):
    from rlhf_exp.train.common import advance_bar, progress_bar

    bar = progress_bar("ppo", 3, enabled=True)
    for step in (1, 2):
        advance_bar(bar, reward=f"{step}.000")
    assert bar.n == 2 and "2/3" in str(bar) and "reward=2.000" in str(bar)
    bar.close()
    drawn = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert [line for line in drawn if "reward=" in line][-1].split("|")[2].split("[")[0].strip() == "2/3"
    assert progress_bar("ppo", 0, enabled=True).disable, "train.steps=0: no empty bar"
    assert progress_bar("ppo", 5, enabled=False).disable, "only the main process draws"
