"""What a user's command must never do (docs/reliability.md): destroy a run folder, keep going silently, run code a
checkpoint carries, or hang after a second SIGTERM. Each test runs the real entry point (``python -m rlhf_exp`` in a
subprocess where exit codes, signals or the last printed line matter, ``rlhf_exp.__main__.run`` otherwise).

The rewards that misbehave on purpose (send SIGTERM, block forever, fail) live in a module written into the test's
folder and put on ``PYTHONPATH``: ``reward_model=function reward_model.fn=reltest_rewards:<name>``. Their call
counter counts the reward calls of one process: call 1 is the step-0 evaluation, call k + 1 the rollout of step k.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlhf_exp.train import checkpoint as ck
from tests.conftest import compose

ROOT = Path(__file__).resolve().parent.parent
TINY = ["logger=none", "train.batch_size=8", "train.mini_batch_size=4", "eval.every=0", "dataset.eval_size=8",
        "generation.max_new_tokens=6", "device=cpu"]
REWARDS = textwrap.dedent('''
    import ctypes, os, signal, threading, time

    CALLS = [0]

    def _count():
        CALLS[0] += 1
        return CALLS[0]

    def _scores(completions):
        return [len(c) / 10.0 for c in completions]

    def sigterm_at(completions, at=0, **kwargs):
        """Sends this process SIGTERM at reward call ``at`` (as SLURM's preemption would)."""
        if _count() == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return _scores(completions)

    def block_at(completions, at=1, how="event", **kwargs):
        """From reward call ``at`` on, blocks forever (a stuck HTTP judge): in Python (``event``), or in C, where no
        Python signal handler can run (``mutex``: a non-recursive pthread mutex locked twice by one thread)."""
        if _count() >= at:
            with open(os.path.join(os.environ["REL_TEST_DIR"], "blocked"), "w") as f:
                f.write(how)
            if how == "event":
                threading.Event().wait()
            else:
                libc = ctypes.CDLL(None)
                mutex = ctypes.create_string_buffer(64)          # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
                libc.pthread_mutex_lock(mutex)
                libc.pthread_mutex_lock(mutex)
        return _scores(completions)

    def judge_down(completions, rank0_delay=0, **kwargs):
        if os.environ.get("RANK", "0") == "0":
            time.sleep(rank0_delay)
        raise ConnectionError("the judge at http://judge:8000 is down")
''')


@pytest.fixture
def rewards_dir(tmp_path, monkeypatch):
    """A folder with ``reltest_rewards.py``, on sys.path (in-process runs) and on PYTHONPATH (subprocesses)."""
    d = tmp_path / "mods"
    d.mkdir()
    (d / "reltest_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("REL_TEST_DIR", str(tmp_path))
    sys.modules.pop("reltest_rewards", None)
    return d


def reward(fn: str, **kwargs) -> list[str]:
    return ["reward_model=function", f"reward_model.fn=reltest_rewards:{fn}"] + \
        [f"+reward_model.kwargs.{k}={v}" for k, v in kwargs.items()]


def _env(tmp_path: Path, **extra) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    return {**base, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
            "HYDRA_FULL_ERROR": "0", "REL_TEST_DIR": str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(tmp_path / "mods"), str(ROOT)]), **extra}


def cli(args, tmp_path: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_exp", *args], cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def last_line(text: str) -> str:
    lines = [x for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and mode."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode & 0o777)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(overrides, out):
    from rlhf_exp.__main__ import run

    return run(compose(overrides), out)


# ------------------------------------------------------------------------------------------------ resume refusals
@pytest.mark.timeout(900)
def test_another_objective_in_an_interrupted_or_finished_run_folder_changes_nothing(tmp_path, rewards_dir):
    """The issue's case: objective=grpo started in the folder of a PPO run stopped by SIGTERM after step 3. It is
    refused before anything in the folder is touched (every file the same, bit for bit); so is a finished run's
    folder with another setting (non-zero exit, not "nothing to do")."""
    ppo = TINY + ["train.steps=4", "train.checkpoint_every=2", "hydra.run.dir=run"] + reward("sigterm_at", at=4)
    p = cli(ppo, tmp_path)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr[-3000:]
    run = tmp_path / "run"
    assert [s for s, _ in ck.list_checkpoints(run / "checkpoints")] == [2, 3]
    before = snapshot(run)
    p = cli(ppo + ["objective=grpo"], tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    line = last_line(p.stderr)
    assert line.startswith("[rlhf_exp] error: ") and "objective.name: 'ppo' -> 'grpo'" in line, p.stderr[-3000:]
    assert "Nothing in the folder was changed" in line and "hydra.run.dir=" in line and "Traceback" not in p.stderr
    assert snapshot(run) == before
    p = cli(ppo, tmp_path)                                         # the original command continues it
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout and "step_3" in p.stdout
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]
    finished = snapshot(run)
    p = cli(ppo + ["kl.kl_coef=0.3"], tmp_path)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "finished after 4 steps" in last_line(p.stderr) and "kl.kl_coef: 0.2 -> 0.3" in last_line(p.stderr)
    assert "nothing to do" not in p.stdout
    assert snapshot(run) == finished


def test_more_steps_under_a_linear_schedule_is_refused_not_a_jump_of_the_learning_rate(tmp_path):
    """Issue 27: resuming with more train.steps under a linear (or cosine) schedule would move the learning rate
    (the schedule's length is train.steps): refused with both rates named, the folder unchanged. A constant
    schedule is extended (test_checkpoint.py: train.resume=<path> to more steps)."""
    args = TINY + ["train.lr_schedule=linear", "train.checkpoint_every=1", "train.save_model=false"]
    _run(args + ["train.steps=2"], tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"learning rate jump from 0 to 0\.00015 \(train.steps 2 -> 4\)"):
        _run(args + ["train.steps=4"], tmp_path)
    assert snapshot(tmp_path) == before


def test_an_earlier_attempt_without_checkpoints_is_not_replaced_by_another_experiment(tmp_path):
    """Metrics but no checkpoint (train.checkpoint_every=0, killed before its summary): the same command starts over
    (as before); another setting is refused, leaving the attempt's metrics as they were."""
    args = TINY + ["train.steps=2", "train.checkpoint_every=0", "train.save_model=false"]
    _run(args, tmp_path)
    (tmp_path / "summary.json").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"earlier attempt without a usable checkpoint, with other settings: "
                                         r"kl.kl_coef: 0.2 -> 0.3"):
        _run(args + ["kl.kl_coef=0.3"], tmp_path)
    assert snapshot(tmp_path) == before
    assert _run(args, tmp_path)["status"] == "finished"


# ------------------------------------------------------------------------------------------------ checkpoint trust
class _Payload:
    """Unpickled, it creates the file ``path`` (any code could run instead)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    _run(TINY + ["train.steps=2", "train.checkpoint_every=1"], out)
    return out


def test_every_file_a_run_writes_has_the_same_mode(finished_run):
    """safetensors writes through a private temporary file (mode 0600): the policy and the checkpoints' weights
    would be unreadable to colleagues who can read the metrics."""
    modes = {name: mode for name, (_, mode) in snapshot(finished_run).items()}
    assert "policy/model.safetensors" in modes and "checkpoints/step_2/model.safetensors" in modes
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    assert {n: oct(m) for n, m in modes.items() if m != expected} == {}


@pytest.mark.parametrize("name", ["loop_state_rank0.pt", "random_states_0.pkl", "optimizer.bin",
                                  "custom_checkpoint_0.pkl"])
def test_a_crafted_checkpoint_runs_no_code(finished_run, tmp_path, name):
    """A checkpoint from elsewhere whose pickle would create a file (meta.json updated to match, as an attacker
    would): train.resume=<it> fails with a message naming the file, and the file is never created."""
    crafted = tmp_path / "step_2"
    shutil.copytree(finished_run / "checkpoints" / "step_2", crafted)
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "x": _Payload(marker)}, crafted / name)
    meta = json.loads((crafted / "meta.json").read_text())
    size, digest = (crafted / name).stat().st_size, hashlib.sha256((crafted / name).read_bytes()).hexdigest()
    meta["files"][name] = size if isinstance(meta["files"]["model.safetensors"], int) else {"size": size,
                                                                                           "sha256": digest}
    (crafted / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception) as refused:
        _run(TINY + ["train.steps=3", f"train.resume={crafted}"], tmp_path / "new")
    assert not marker.exists(), "the checkpoint ran code"
    assert isinstance(refused.value, ck.ResumeRefused) and name in str(refused.value), refused.value
    assert "unpickl" in str(refused.value)
    assert not (tmp_path / "new" / "summary.json").exists()


def test_a_damaged_checkpoint_is_one_that_fails_its_own_hash(finished_run, tmp_path, capsys):
    """Same size, other bytes: the sha256 recorded at save says so; resume falls back to the one before and sets
    the damaged one aside (kept, never used) once that one has loaded."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()                                  # as if killed before the summary
    f = run / "checkpoints" / "step_2" / "optimizer.bin"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    summary = _run(TINY + ["train.steps=2", "train.checkpoint_every=1"], run)
    out = capsys.readouterr().out
    assert "step_2 is damaged (optimizer.bin does not have the sha256 digest recorded at save" in out
    assert "resumed from" in out and "step_1" in out and summary["status"] == "finished"
    assert (run / "checkpoints" / "damaged_step_2").is_dir()


# ------------------------------------------------------------------------------------------------ save errors
def _fail_step_4(exc):
    def wrap(real):
        def writer(obj, f, *a, **k):
            if "step_4" in str(f):
                raise exc
            return real(obj, f, *a, **k)
        return writer
    return wrap


@pytest.mark.parametrize("where", ["torch", "safetensors"])
def test_a_save_error_of_any_type_removes_the_partial_files_and_the_run_goes_on(tmp_path, monkeypatch, capsys, where):
    """A full disk as torch's writer reports it (RuntimeError "enforce fail ... unexpected pos") and as safetensors
    does (SafetensorError): simulated in-process (test_disk_full_on_a_real_small_file_system does it for real)."""
    import accelerate.utils.other as acc_other
    from safetensors import SafetensorError

    if where == "torch":
        monkeypatch.setattr(torch, "save", _fail_step_4(RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 8095872 vs 8095760\nframe #0: c10::Error"))(
            torch.save))
    else:
        monkeypatch.setattr(acc_other, "safe_save_file", _fail_step_4(SafetensorError(
            'Error while serializing: I/O error: No space left on device (os error 28)'))(acc_other.safe_save_file))
    summary = _run(TINY + ["train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=null"], tmp_path)
    err = [x for x in capsys.readouterr().err.splitlines() if "could not be written" in x]
    assert len(err) == 1 and "checkpoint of step 4" in err[0] and "steps after step 2" in err[0], err
    assert ("RuntimeError" if where == "torch" else "SafetensorError") in err[0]
    assert summary["status"] == "finished"
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")] == [2, 6]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.fixture
def small_fs(tmp_path):
    """A 40 MiB tmpfs (needs root, as the tests are run here; skipped otherwise), unmounted after the test."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.timeout(900)
def test_disk_full_on_a_real_small_file_system(small_fs, tmp_path):
    """A run on a 40 MiB file system with 14 MiB free: the first checkpoint (12 MiB) fits, the second does not (one
    warning line, its partial files removed), the final policy/ does not either: the run fails with summary.json and
    its one-line message. With the space freed, the same command resumes from the last complete checkpoint."""
    ballast = small_fs / "ballast"
    free = shutil.disk_usage(small_fs).free
    with open(ballast, "wb") as f:
        f.write(b"\0" * (free - 14 * 2**20))
    args = TINY + ["train.steps=4", "train.checkpoint_every=2", f"hydra.run.dir={small_fs / 'run'}"]
    p = cli(args, tmp_path)
    assert p.returncode == 1, p.stderr[-3000:]
    warnings = [x for x in p.stderr.splitlines() if "could not be written" in x]
    assert len(warnings) == 1 and "checkpoint of step 4" in warnings[0], p.stderr[-3000:]
    assert last_line(p.stderr).startswith("[rlhf_exp] RUN FAILED: ") and "Traceback" not in p.stderr
    run = small_fs / "run"
    assert json.loads((run / "summary.json").read_text())["status"].startswith("failed: ")
    assert [s for s, _ in ck.list_checkpoints(run / "checkpoints")] == [2]
    assert not [x for x in list(run.iterdir()) + list((run / "checkpoints").iterdir()) if ".tmp-" in x.name]
    ballast.unlink()
    p = cli(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout and "step_2" in p.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]


@pytest.fixture
def read_only_dir(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")
    try:
        (mnt / "runs").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        yield mnt / "runs"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_read_only_run_folder_is_one_line_naming_hydra_run_dir(read_only_dir, tmp_path):
    p = cli(TINY + ["train.steps=1", f"hydra.run.dir={read_only_dir / 'new'}"], tmp_path, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    line = last_line(p.stderr)
    assert line.startswith("[rlhf_exp] error: the run folder") and "Read-only file system" in line, p.stderr[-3000:]
    assert "hydra.run.dir=<a writable folder>" in line and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------ stopping
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["event", "mutex"])
def test_a_second_sigterm_stops_a_run_blocked_in_its_reward(tmp_path, rewards_dir, how):
    """The reward blocks forever at step 3 (in Python, or in C where no Python handler can run). SIGTERM asks for a
    checkpoint at the end of the step, which never comes; a second SIGTERM stops the process within seconds, with
    summary.json written and the newest complete checkpoint (step 2) intact."""
    args = TINY + ["train.steps=4", "train.checkpoint_every=1", "hydra.run.dir=run"] + reward("block_at", at=4, how=how)
    p = subprocess.Popen([sys.executable, "-m", "rlhf_exp", *args], cwd=tmp_path, env=_env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "blocked").exists():
            assert p.poll() is None and time.time() < deadline, p.communicate()[0][-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        time.sleep(2.0)                           # more than the 1 s in which a repeat is the same request
        assert p.poll() is None, "the first SIGTERM waits for the end of the step"
        p.send_signal(signal.SIGTERM)
        t0 = time.time()
        out, _ = p.communicate(timeout=60)
        assert time.time() - t0 < 20, out[-3000:]        # the watchdog exits 5 s after the second signal
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 128 + signal.SIGTERM, out[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 2, summary
    assert summary["checkpoint"].endswith("step_2")
    assert [s for s, _ in ck.list_checkpoints(run / "checkpoints")][-1] == 2
    assert ck.checkpoint_problem(run / "checkpoints" / "step_2") is None
    assert not [x for x in (run / "checkpoints").iterdir() if x.name.startswith(".")]


def test_reward_timeout_fails_a_stuck_call_naming_the_reward(tmp_path, rewards_dir):
    p = cli(TINY + ["train.steps=2", "reward_model.timeout=2"] + reward("block_at", at=2), tmp_path, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    line = last_line(p.stderr)
    assert line.startswith("[rlhf_exp] RUN FAILED: RewardTimeout: Reward 'function' did not return within "
                           "reward_model.timeout=2 s"), p.stderr[-3000:]


def test_call_with_timeout_returns_raises_and_abandons():
    import threading

    from rlhf_exp.rewards.base import RewardTimeout, call_with_timeout

    assert call_with_timeout(lambda: 3, 1.0, "r", "reward_model.timeout") == 3
    assert call_with_timeout(lambda: 4, None, "r", "reward_model.timeout") == 4
    with pytest.raises(ZeroDivisionError):
        call_with_timeout(lambda: 1 / 0, 1.0, "r", "reward_model.timeout")
    stuck = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(RewardTimeout, match=r"Reward 'judge' did not return within reward_model.parts.j.timeout=0.2 s"):
        call_with_timeout(stuck.wait, 0.2, "judge", "reward_model.parts.j.timeout")
    assert time.perf_counter() - t0 < 5
    stuck.set()


# ------------------------------------------------------------------------------------------------ failure reports
def test_a_failed_run_ends_with_its_one_line_message(tmp_path, rewards_dir):
    p = cli(TINY + ["train.steps=1", "hydra.run.dir=run"] + reward("judge_down"), tmp_path, timeout=300)
    assert p.returncode == 1
    assert last_line(p.stderr) == (
        "[rlhf_exp] RUN FAILED: ConnectionError: the judge at http://judge:8000 is down (run folder "
        f"{tmp_path / 'run'}: summary.json has the traceback; HYDRA_FULL_ERROR=1 prints it)"), p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.count("RUN FAILED") == 1
    assert "ConnectionError" in json.loads((tmp_path / "run" / "summary.json").read_text())["traceback"]
    p = cli(TINY + ["train.steps=1", "hydra.run.dir=run2"] + reward("judge_down"), tmp_path, timeout=300,
            HYDRA_FULL_ERROR="1")
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr
    assert last_line(p.stderr).startswith("[rlhf_exp] RUN FAILED: ConnectionError: the judge at"), p.stderr[-3000:]


@pytest.mark.timeout(600)
def test_under_torchrun_a_failure_of_every_rank_is_printed_once(tmp_path, rewards_dir):
    """Both ranks fail with the same error (rank 0 a few seconds later, so that both reach their report): one line,
    and no worker traceback (torchrun's own report of the failed launch follows)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "rlhf_exp", *TINY, "train.steps=1", "hydra.run.dir=run", *reward("judge_down", rank0_delay=3)]
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=500)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert out.count("[rlhf_exp] RUN FAILED: ConnectionError: the judge at http://judge:8000 is down") == 1, out[-4000:]
    assert 'rlhf_exp/__main__.py", line' not in out, out[-4000:]          # no traceback of a worker
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"].startswith("failed: ConnectionError")


def test_print_once_prints_each_distinct_line_once_per_launch(tmp_path, monkeypatch, capsys):
    from rlhf_exp.cli import print_once

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", f"test{os.getpid()}{time.time_ns()}")
    for line in ["error A", "error A", "error B"]:
        print_once(line)
    assert capsys.readouterr().err.splitlines() == ["error A", "error B"]


# ------------------------------------------------------------------------------------------------ bad input
def test_a_too_long_prompt_fails_as_soon_as_it_is_made_with_progress_shown(tmp_path, capsys, monkeypatch):
    """Long data preparation shows a bar (here at once; by default after 3 s) and stops at the first prompt that is
    too long for the model, naming its row."""
    from rlhf_exp.data import prompts

    monkeypatch.setattr(prompts, "PROGRESS_DELAY_S", 0.0, raising=False)
    rows = tmp_path / "long.jsonl"
    text = " ".join(["the film was great and the acting was superb"] * 10)       # ~100 tokens: fits
    rows.write_text("".join(json.dumps({"prompt": text + (" and more" * 40 if i == 3000 else "")}) + "\n"
                            for i in range(6000)))
    from rlhf_exp.data import DatasetError

    with pytest.raises(DatasetError, match=r"row 3000: the prompt is \d+ tokens long, but the 128 positions of "
                                           r"model.path=.* less generation.max_new_tokens=6 leave 122 for a prompt"):
        _run(TINY + ["dataset=files", f"dataset.data_files={rows}", "dataset.eval_split=null", "dataset.seed=0",
                     "train.steps=1"], tmp_path / "run")
    assert "[rlhf_exp] preparing prompts" in capsys.readouterr().err


def test_train_and_test_files_with_other_columns_are_named(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text('{"prompt": "a good film", "label": 1}\n{"prompt": "a dull plot", "label": 0}\n')
    test.write_text('{"prompt": "the ending", "score": 0.5}\n{"prompt": "the actors", "score": 0.1}\n')
    from rlhf_exp.data import DatasetError

    with pytest.raises(DatasetError, match=rf"not have the same columns \(train: {train} has prompt, label; test: "
                                           rf"{test} has prompt, score\)"):
        _run(TINY + ["dataset=files", f"dataset.data_files={{train: '{train}', test: '{test}'}}",
                     "dataset.eval_split=test", "train.steps=1"], tmp_path / "run")


def test_resume_from_a_checkpoint_written_with_another_objective_is_refused(finished_run, tmp_path):
    """train.resume=<path> compares the settings recorded in the checkpoint's meta.json, before anything loads."""
    with pytest.raises(ValueError, match=r"written with other settings of what it holds: objective.name: "
                                         r"'ppo' -> 'grpo'"):
        _run(TINY + ["objective=grpo", "train.steps=3", f"train.resume={finished_run / 'checkpoints' / 'step_2'}"],
             tmp_path / "new")
    assert not (tmp_path / "new" / "summary.json").exists()


def test_a_causal_lm_as_the_reward_classifier_is_refused(tmp_path):
    from rlhf_exp.config import resolve_asset

    policy = resolve_asset("tiny_reviews/policy")
    with pytest.raises(ValueError, match=r"is a GPT2LMHeadModel \(a causal language model\), not a classifier: its "
                                         r"checkpoint has no classification head \(score.weight"):
        _run(TINY + ["train.steps=1", f"reward_model.path={policy}", "reward_model.label=LABEL_1"], tmp_path)
