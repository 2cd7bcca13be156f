"""Checkpoints and resume (rlhf_exp/train/checkpoint.py, docs/checkpoints.md).

The end-to-end tests run ``python -m rlhf_exp`` in subprocesses (kill -9 needs a process to kill), through a small
driver that kills or signals its own process at an exact point: ``CKPT_TEST_KILL_AT=k`` (``CKPT_TEST_SIGNAL=SIGKILL``)
kills right after step k is logged (before its step boundary), any other signal is sent at the start of step k. All
runs of a comparison use the same environment (one thread), so their floats are comparable bit for bit.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlhf_exp import files
from rlhf_exp.train import checkpoint as ck
from rlhf_exp.train import run_folder
from tests.conftest import compose

ROOT = Path(__file__).resolve().parent.parent
TINY = ["logger=none", "train.batch_size=8", "train.mini_batch_size=4", "eval.every=3", "dataset.eval_size=8",
        "generation.max_new_tokens=6", "device=cpu", "train.steps=6", "train.checkpoint_every=2"]
OFFLINE_TINY = ["dataset.offline_train_size=16", "dataset.offline_eval_size=8", "dataset.train_size=16"]
DRIVER = textwrap.dedent("""
    import os, signal, sys
    kill_at = int(os.environ.get("CKPT_TEST_KILL_AT", "0"))
    sig = os.environ.get("CKPT_TEST_SIGNAL", "SIGKILL")
    if kill_at and os.environ.get("RANK", "0") == "0":
        from rlhf_exp.train.history import RunHistory
        from rlhf_exp.train.offline import OfflineTrainer
        from rlhf_exp.train.online import OnlineTrainer
        if sig == "SIGKILL":
            orig = RunHistory.record
            def record(self, metrics, step):
                orig(self, metrics, step)
                if step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            RunHistory.record = record
        else:
            for cls in (OnlineTrainer, OfflineTrainer):
                def patched(self, step, _orig=cls.train_step):
                    if step == kill_at:
                        os.kill(os.getpid(), getattr(signal, sig))
                    return _orig(self, step)
                cls.train_step = patched
    from rlhf_exp.__main__ import main
    sys.argv = ["rlhf_exp", *sys.argv[1:]]
    main()
""")


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT), **extra}


def _start(args, cwd, launcher=None, **env):
    launcher = launcher or [sys.executable, "-c", DRIVER]
    return subprocess.Popen(launcher + list(args), cwd=cwd, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(p, rc=0):
    out, _ = p.communicate(timeout=900)
    assert p.returncode == rc, out[-4000:]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_run(a: Path, b: Path):
    """Final parameters, the last metrics line (perf/* aside) and summary.json (timings and paths aside) equal."""
    from safetensors.torch import load_file

    pa, pb = load_file(a / "policy" / "model.safetensors"), load_file(b / "policy" / "model.safetensors")
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]          # no duplicated or missing steps
    strip = lambda row: {k: v for k, v in row.items() if not k.startswith("perf/")}  # noqa: E731
    assert strip(rows_a[-1]) == strip(rows_b[-1])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    skip = {"wall_s", "policy_dir", "perf/samples_per_s_end"}
    assert {k: v for k, v in sa.items() if k not in skip} == {k: v for k, v in sb.items() if k not in skip}
    assert sb["status"] == "finished"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.timeout(900)
@pytest.mark.parametrize("objective", ["grpo", "dpo"])
def test_kill_9_between_checkpoints_then_rerun_is_identical(tmp_path, objective):
    args = TINY + [f"objective={objective}"] + (OFFLINE_TINY if objective == "dpo" else [])
    full = _start(args + ["hydra.run.dir=full"], tmp_path)
    killed = _start(args + ["hydra.run.dir=run"], tmp_path, CKPT_TEST_KILL_AT="3")     # after step 3 is logged
    _finish(killed, rc=-signal.SIGKILL)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_2"]
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    out = _finish(_start(args + ["hydra.run.dir=run"], tmp_path))
    assert "stale lock" in out and "resumed from" in out and "step_2" in out
    _finish(full)
    assert_same_run(tmp_path / "full", tmp_path / "run")
    assert not (tmp_path / "run" / run_folder.LOCK).exists()


@pytest.mark.timeout(900)
def test_ppo_sigterm_and_kill_9_with_a_damaged_newest_checkpoint_resume_identically(tmp_path):
    """PPO: SIGTERM saves at the next step boundary and exits 143 with a resume line; kill -9 after step 5 with the
    newest checkpoint (step 4) cut short falls back to step 2, with a notice. Both continue to the uninterrupted
    run's exact end."""
    full = _start(TINY + ["hydra.run.dir=full"], tmp_path)
    term = _start(TINY + ["hydra.run.dir=term"], tmp_path, CKPT_TEST_KILL_AT="3", CKPT_TEST_SIGNAL="SIGTERM")
    out = _finish(term, rc=128 + signal.SIGTERM)
    assert "SIGTERM received" in out and "INTERRUPTED (SIGTERM) after step 3" in out
    assert "To resume" in out and "hydra.run.dir=" in out
    summary = json.loads((tmp_path / "term" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 3
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "term" / "checkpoints")] == [2, 3]
    killed = _start(TINY + ["hydra.run.dir=kill"], tmp_path, CKPT_TEST_KILL_AT="5")
    _finish(killed, rc=-signal.SIGKILL)
    out = _finish(_start(TINY + ["hydra.run.dir=term"], tmp_path))
    assert "resumed from" in out and "step_3" in out
    newest = tmp_path / "kill" / "checkpoints" / "step_4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])                       # cut short, as by a full disk or a crash
    out = _finish(_start(TINY + ["hydra.run.dir=kill"], tmp_path))
    assert "step_4 is damaged (model.safetensors has 1000 bytes" in out and "step_2 (step 2 of 6)" in out
    _finish(full)
    assert_same_run(tmp_path / "full", tmp_path / "term")
    assert_same_run(tmp_path / "full", tmp_path / "kill")
    assert (tmp_path / "kill" / "checkpoints" / "damaged_step_4").is_dir()   # set aside, not used, not deleted


@pytest.mark.timeout(900)
def test_torchrun_two_processes_killed_then_resumed_finish(tmp_path):
    args = TINY + ["train.steps=4", "eval.every=0", "train.save_model=false", "hydra.run.dir=ddp"]
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), str(script)]
    p = _start(args, tmp_path, torchrun, CKPT_TEST_KILL_AT="3")          # rank 0 is killed after step 3
    out, _ = p.communicate(timeout=900)
    assert p.returncode != 0, out[-3000:]
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "ddp" / "checkpoints")] == [2]
    torchrun[6] = str(_free_port())
    out = _finish(_start(args, tmp_path, torchrun))
    assert "resumed from" in out and "step_2" in out
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4
    meta = json.loads((tmp_path / "ddp" / "checkpoints" / "step_4" / ck.META).read_text())
    assert meta["world"] == 2 and {"loop_state_rank0.pt", "loop_state_rank1.pt"} <= set(meta["files"])


@pytest.mark.timeout(900)
def test_rerunning_a_sweep_skips_finished_jobs_and_resumes_the_unfinished_one(tmp_path):
    args = ["-m"] + TINY + ["train.steps=4", "eval.every=0", "train.save_model=false", "seed=0,1",
                            "hydra.sweep.dir=sweep"]
    p = _start(args, tmp_path, CKPT_TEST_KILL_AT="3")                    # job 0 is killed after its step 3
    _finish(p, rc=-signal.SIGKILL)
    jobs = sorted((tmp_path / "sweep").glob("00*"))
    assert len(jobs) == 1 and jobs[0].name.startswith("000_")        # job 1 never started
    out = _finish(_start(args, tmp_path))
    assert "resumed from" in out and "step_2" in out
    out = _finish(_start(args, tmp_path))
    assert out.count("nothing to do") == 2
    for job in sorted((tmp_path / "sweep").glob("00*")):
        assert json.loads((job / "summary.json").read_text())["status"] == "finished"
        assert [json.loads(x)["step"] for x in (job / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------ in process
def _run(overrides, out):
    from rlhf_exp.__main__ import run

    return run(compose(TINY + overrides), out)


def test_failed_save_keeps_the_previous_checkpoint_and_says_what_is_lost(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if "step_4" in str(f):
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    summary = _run(["train.steps=6", "eval.every=0", "train.keep_checkpoints=null"], tmp_path)
    err = capsys.readouterr().err
    assert "checkpoint of step 4 could not be written (OSError" in err and "No space left" in err
    assert "steps after step 2" in err
    assert summary["status"] == "finished"
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")] == [2, 6]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no half-written folder


def test_keep_checkpoints_and_finished_run_is_skipped_and_resume_false_refuses(tmp_path, capsys):
    first = _run(["train.steps=4", "eval.every=0", "train.keep_checkpoints=1"], tmp_path)
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")] == [4]
    again = _run(["train.steps=4", "eval.every=0"], tmp_path)                 # auto: finished, nothing to do
    assert again == json.loads((tmp_path / "summary.json").read_text())
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="train.resume=false.*already holds a run"):
        _run(["train.steps=4", "train.resume=false"], tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == first["status"] == "finished"
    # resume=<path>: a new folder continues from another run's checkpoint, to more steps
    more = _run(["train.steps=6", "eval.every=0", f"train.resume={tmp_path / 'checkpoints' / 'step_4'}"],
                tmp_path / "more")
    assert more["steps"] == 6
    assert [json.loads(x)["step"] for x in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()] == [5, 6]
    with pytest.raises(ValueError, match="not a usable checkpoint"):
        _run([f"train.resume={tmp_path / 'nope'}"], tmp_path / "other")


def test_a_live_run_owns_its_folder(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / run_folder.LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                    "started": "now"}))
        with pytest.raises(run_folder.RunFolderBusy, match=f"live run \\(pid {sleeper.pid}"):
            _run(["train.steps=1"], tmp_path)
        assert not (tmp_path / "summary.json").exists() and not (tmp_path / "metrics.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    _run(["train.steps=1", "eval.every=0", "train.save_model=false"], tmp_path)   # now a stale lock: taken over
    assert not (tmp_path / run_folder.LOCK).exists()


# ------------------------------------------------------------------------------------------------ units
def test_atomic_dir_keeps_the_old_folder_when_the_write_fails(tmp_path):
    target = tmp_path / "policy"
    with files.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(OSError):
        with files.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new, half")
            raise OSError(28, "No space left on device")
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    with files.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_cut_jsonl_drops_later_steps_and_a_cut_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(5)) + '{"step": 5, "x"')
    assert files.cut_jsonl(f, 2) == 3
    assert [json.loads(x)["step"] for x in f.read_text().splitlines()] == [0, 1, 2]


def _trainer(cfg, out):
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.train.online import OnlineTrainer

    return OnlineTrainer(cfg, out, Tracker(out, cfg.logger, {}, "t", enabled=False))


def _next_draws(t):
    """What the loop state decides about the next steps: prompts, length and shuffle draws, the coefficient, the
    reward moments, the objective's baseline, the history."""
    return ([p.text for p in t.sampler.next(11)], torch.rand(4, generator=t.len_gen),
            torch.rand(4, generator=t.shuffle_gen), t.kl_ctl.value, t.reward_moments.state_dict(),
            t.objective.state_dict(), dict(t.history.metrics))


def test_loop_state_round_trips_through_a_safe_load_and_continues_identically(tmp_path):
    """The online loop's state (the prompt sampler: a list and a random state; the named generators: tensors; the
    KL controller; the reward's running moments; the objective's moving-average baseline; the metric history) is
    written with torch.save and read with torch.load(weights_only=True); a fresh trainer that loads it draws what the
    trainer that wrote it draws next."""
    cfg = compose(TINY + ["objective=reinforce", "objective.baseline=moving_average", "reward.normalize=true",
                          "kl=adaptive", "train.steps=2"])
    a = _trainer(cfg, tmp_path / "a")
    for step in (1, 2):
        a.history.record(a.train_step(step), step)
    assert a.objective.state_dict()["estimator"]["value"] is not None and a.reward_moments.count > 0
    torch.save(ck.loop_state(a, 2, 1.5), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 2 and set(state["trainer"]) == {"sampler", "random", "kl_controller", "objective",
                                                             "history", "reward_moments"}
    b = _trainer(cfg, tmp_path / "b")
    ck.load_loop_state(b, state)
    got, expect = _next_draws(b), _next_draws(a)
    assert got[0] == expect[0] and torch.equal(got[1], expect[1]) and torch.equal(got[2], expect[2])
    assert got[3:] == expect[3:]


def test_state_with_tensors_lists_and_generators_round_trips_and_wrong_keys_are_named(tmp_path, monkeypatch):
    """An objective whose state is not plain numbers (a tensor baseline, a list of past batch means, its own
    generator) declares it in state_dict() and gets it back through the checkpoint's safe load; a state with a
    missing or an extra key is refused with the key named, never loaded in part."""
    from rlhf_exp.core.state import StateKeyError, check_keys

    class Baseline:
        def __init__(self):
            self.value, self.past, self.gen = torch.zeros(3), [], torch.Generator().manual_seed(0)

        def state_dict(self):
            return {"value": self.value.clone(), "past": list(self.past), "gen": self.gen.get_state()}

        def load_state_dict(self, state):
            check_keys(state, ("value", "past", "gen"), "the test baseline")
            self.value, self.past = state["value"].clone(), [float(x) for x in state["past"]]
            self.gen.set_state(state["gen"])

    cfg = compose(TINY + ["train.steps=1"])
    trainers = []
    for name in ("a", "b"):
        t = _trainer(cfg, tmp_path / name)
        t.objective.baseline = Baseline()
        monkeypatch.setattr(t.objective, "state_dict", t.objective.baseline.state_dict)
        monkeypatch.setattr(t.objective, "load_state_dict", t.objective.baseline.load_state_dict)
        trainers.append(t)
    a, b = trainers
    a.objective.baseline.value += torch.tensor([1.0, 2.0, 3.0])
    a.objective.baseline.past += [0.5, 0.25]
    torch.rand(5, generator=a.objective.baseline.gen)
    torch.save(ck.loop_state(a, 1, 0.0), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    ck.load_loop_state(b, state)
    assert torch.equal(b.objective.baseline.value, torch.tensor([1.0, 2.0, 3.0]))
    assert b.objective.baseline.past == [0.5, 0.25]
    assert torch.equal(torch.rand(3, generator=b.objective.baseline.gen), torch.rand(3, generator=a.objective.baseline.gen))

    missing = {**state, "trainer": {k: v for k, v in state["trainer"].items() if k != "history"}}
    with pytest.raises(StateKeyError, match="has no 'history'"):
        ck.load_loop_state(b, missing)
    extra = {**state, "trainer": {**state["trainer"], "reward_moments": {"count": 1.0, "mean": 0.0, "var": 1.0}}}
    with pytest.raises(StateKeyError, match="holds 'reward_moments', which this run does not have"):
        ck.load_loop_state(b, extra)
    inner = {**state, "trainer": {**state["trainer"], "random": {"lengths": state["trainer"]["random"]["lengths"]}}}
    with pytest.raises(StateKeyError, match="random generators has no 'shuffle'"):
        ck.load_loop_state(b, inner)


def test_compare_names_and_skips_a_run_with_an_unreadable_summary(tmp_path, capsys):
    from rlhf_exp.compare import load_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "fini')
    record = load_run_dir(run)
    assert record.status.startswith("unreadable summary.json") and not record.finished
    assert str(run) in capsys.readouterr().err


def test_a_signal_asks_for_a_stop_and_a_later_second_one_stops_at_once(tmp_path):
    class OneProcess:
        is_main_process, num_processes, process_index = True, 1, 0

    c = ck.Checkpointer(compose(TINY), tmp_path, OneProcess())
    c.signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert c.stop_signal == "SIGTERM" and c._stop_agreed()
        os.kill(os.getpid(), signal.SIGINT)               # at once after the first: the same request (one preemption
        assert c.stop_signal == "SIGTERM"                 # delivered by a launcher and to its process group)
        c.signals._first_stop_at -= c.signals.REPEAT_WINDOW_S            # later: a second signal stops at once
        with pytest.raises(run_folder.RunAborted) as aborted:
            os.kill(os.getpid(), signal.SIGINT)
        assert isinstance(aborted.value, KeyboardInterrupt) and aborted.value.exit_code == 130
        assert signal.getsignal(signal.SIGINT) is not c.signals._on_signal    # the handlers are given back
    finally:
        c.close()
    with pytest.raises(run_folder.RunInterrupted) as stop:
        c.stop_signal = "SIGINT"
        c.save = lambda trainer, step, wall_s: None       # (what a failed save returns)
        c.step_done(None, 3, 0.0)
    assert stop.value.exit_code == 130 and stop.value.step == 3


def test_an_unreadable_newest_checkpoint_of_the_right_size_falls_back_while_loading(tmp_path, capsys):
    args = ["train.steps=4", "eval.every=0", "train.keep_checkpoints=null"]
    first = _run(args, tmp_path)
    last = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    (tmp_path / "summary.json").unlink()                                   # as if killed before the summary
    state = tmp_path / "checkpoints" / "step_4" / "loop_state_rank0.pt"
    state.write_bytes(b"\0" * state.stat().st_size)                        # garbled, same size: meta.json passes
    again = _run(args, tmp_path)
    out = capsys.readouterr().out
    assert "step_4 is damaged" in out and "falling back to" in out and "resumed from" in out
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("perf/") and k != "wall_s"}  # noqa: E731
    assert strip(json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])) == strip(json.loads(last))
    assert strip(again) == strip(first)
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert (tmp_path / "checkpoints" / "damaged_step_4").is_dir()


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    from rlhf_exp.tracking import WANDB_ID_FILE, Tracker

    ids = []
    for step in (0, 1):
        t = Tracker(tmp_path, {"kind": "wandb", "mode": "offline", "project": "p"}, {"a": 1}, "r")
        t.log({"x": 1.0}, step)
        ids.append(t.wandb_run.id)
        t.close()
    assert ids[0] == ids[1] == (tmp_path / WANDB_ID_FILE).read_text().strip()


def test_config_changes_name_what_differs_on_resume():
    old = {"train": {"lr": 1e-3, "steps": 10, "resume": "auto"}, "logger": {"kind": "wandb"}, "seed": 0}
    new = {"train": {"lr": 2e-3, "steps": 20, "resume": "auto"}, "logger": {"kind": "none"}, "seed": 0, "x": 1}
    assert ck.config_changes(old, new) == ["train.lr: 0.001 -> 0.002", "x: None -> 1"]
