"""Checkpoints, resume, graceful stop and the run-folder lock.

A run writes ``<run dir>/checkpoints/step_<k>/`` every ``train.checkpoint_every`` steps and at its last step, and
keeps the newest ``train.keep_checkpoints``. A checkpoint holds:

* what ``accelerate.Accelerator.save_state`` saves: the model (policy with value head and LoRA adapters), the
  optimizer (sharded by the engine under FSDP / DeepSpeed), the learning-rate scheduler (registered with
  ``register_for_checkpointing``) and every process's random states (python, numpy, torch, CUDA);
* ``loop_state_rank<r>.pt``, one per process: the loop's own state (:func:`loop_state`): the step, the wall time so
  far, and ``trainer.state_dict()``, which composes the state of each stateful part by name: the metric history that
  ``summary.json`` is computed from, the KL controller's coefficient, the reward running moments, the objective's
  baselines (moving averages), the prompt sampler (the data position of the offline loop), the loop's named random
  generators (response lengths, shuffles). Only tensors, numbers, strings, lists and dicts: it is loaded with
  ``torch.load(..., weights_only=True)``, which runs no code;
* ``meta.json``, written last: the step and the size of every file. A checkpoint without it, or whose files do not
  have the recorded sizes, is damaged: resume falls back to the one before, with a notice.

Every checkpoint is written into a temporary folder that is renamed when complete, so a kill during a save leaves
the previous checkpoints as they were; a failed save (a full disk) keeps them too and says what would be lost.

The loops use two calls (:func:`begin` at the start, :func:`step_done` after each step is logged); ``run()`` in
``rlhf_exp.__main__`` creates a :class:`Checkpointer`, which also owns the run folder (a lock file naming the owner
process) and turns SIGTERM / SIGINT into "save at the next step boundary, then stop". User documentation:
docs/checkpoints.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

from rlhf_exp.core.state import check_keys

CHECKPOINTS = "checkpoints"
META = "meta.json"
LOCK = ".lock"
LOOP_STATE = "loop_state_rank{}.pt"
STEP_PREFIX = "step_"


class RunInterrupted(KeyboardInterrupt):
    """The run stopped at a step boundary after SIGTERM / SIGINT, with a checkpoint saved (or none, if it failed).

    A ``KeyboardInterrupt``, so that it stops a Hydra multirun too. ``exit_code`` is 128 + the signal number."""

    def __init__(self, signame: str, step: int, checkpoint: Optional[Path]):
        self.signame, self.step, self.checkpoint = signame, step, checkpoint
        self.exit_code = 128 + int(getattr(signal, signame, signal.SIGTERM))
        super().__init__(f"stopped by {signame} after step {step}")


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


# ---------------------------------------------------------------------------------------------------- atomic files
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``: readers see the old file or the
    new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends without error it replaces ``path`` (an older
    ``path`` is moved aside first and removed after). On an error the temporary folder is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename the complete folder ``tmp`` to ``path``, replacing an existing ``path``."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cut_jsonl(path: Path, last_step: int) -> int:
    """Cut a ``metrics.jsonl`` / ``samples.jsonl`` after its rows with ``step <= last_step`` (rows are in step order;
    a line cut short by a kill ends the kept part). Truncated in place, so that a logger holding the file open for
    appending goes on at the new end. Returns how many lines were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep, lines = 0, data.splitlines(keepends=True)
    for line in lines:
        try:
            row = json.loads(line)
            ok = line.endswith(b"\n") and int(row.get("step", 0)) <= last_step
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
            ok = False
        if not ok:
            break
        keep += len(line)
    if keep < len(data):
        os.truncate(path, keep)
    return len(lines) - len(data[:keep].splitlines())


# ---------------------------------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def acquire_lock(run_dir: Path) -> Path:
    """Take ``<run_dir>/.lock`` (``{"pid", "host", "started"}``) for this process. A lock whose process is gone
    (same host) is stale: replaced, with a notice. Raises :class:`RunFolderBusy` when a live process holds it."""
    path = Path(run_dir) / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
                pid, host = int(owner["pid"]), str(owner["host"])
            except (OSError, ValueError, KeyError, TypeError):
                if time.time() - path.stat().st_mtime < 5:  # being written right now
                    time.sleep(0.5)
                    continue
                owner, pid, host = {}, -1, me["host"]
            if pid == os.getpid() and host == me["host"]:
                return path
            if host != me["host"]:
                raise RunFolderBusy(
                    f"The run folder {run_dir} is locked by pid {pid} on host {host} (since {owner.get('started')}). "
                    f"If that run is gone, delete {path}; otherwise use another folder (hydra.run.dir=...).")
            if _pid_alive(pid):
                raise RunFolderBusy(
                    f"The run folder {run_dir} is in use by a live run (pid {pid}, since {owner.get('started')}): two "
                    f"runs in one folder would mix their metrics. Wait for it, stop it, or use another folder "
                    f"(hydra.run.dir=...).")
            print(f"[rlhf_exp] {path}: stale lock of pid {pid} (no longer running) replaced.", flush=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise RunFolderBusy(f"Could not take the lock {path}; delete it if no run uses {run_dir}.")


def release_lock(path: Optional[Path]) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError, KeyError):
        if int(json.loads(Path(path).read_text())["pid"]) == os.getpid():
            Path(path).unlink()


# ---------------------------------------------------------------------------------------------------- listing
def _step_of(p: Path) -> Optional[int]:
    name = p.name
    if not name.startswith(STEP_PREFIX) or not name[len(STEP_PREFIX):].isdigit():
        return None
    return int(name[len(STEP_PREFIX):])


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_<k>`` folders in ``folder`` (a ``checkpoints/`` folder), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(_step_of(p), p) for p in folder.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why the checkpoint folder ``path`` cannot be used (None when complete): ``meta.json`` missing or unreadable,
    or a file it lists missing or of another size (cut short)."""
    try:
        meta = json.loads((Path(path) / META).read_text())
        files = dict(meta["files"])
        int(meta["step"])
    except FileNotFoundError:
        return f"{META} is missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{META} is unreadable ({type(e).__name__}: {e})"
    for name, size in files.items():
        f = Path(path) / name
        if not f.exists():
            return f"{name} is missing"
        if f.stat().st_size != int(size):
            return f"{name} has {f.stat().st_size} bytes instead of {size} (cut short)"
    return None


def newest_complete(folder: Path, quiet: bool = False) -> Optional[tuple[int, Path]]:
    """The newest complete checkpoint in ``folder``; each damaged newer one is named in a notice (unless ``quiet``)."""
    for step, path in reversed(list_checkpoints(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return step, path
        if not quiet:
            print(f"[rlhf_exp] checkpoint {path} is damaged ({problem}); falling back to the one before.",
                  flush=True)
    return None


# ---------------------------------------------------------------------------------------------------- config
RESUME_FREE_KEYS = ("train.steps", "train.resume", "train.checkpoint_every", "train.keep_checkpoints", "logger.",
                    "run_name", "device")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each setting that differs between the resolved config a run started with and the one
    it resumes with, leaving out those that may change (``train.steps``, checkpoint settings, the logger)."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == f or (f.endswith(".") and k.startswith(f))
                                                for f in RESUME_FREE_KEYS)]


# ---------------------------------------------------------------------------------------------------- loop state
def loop_state(trainer, step: int, wall_s: float) -> dict[str, Any]:
    """Everything of the loop itself that a checkpoint needs: the step, the wall time so far, the number of processes
    and the trainer's own state (``trainer.state_dict()``: its stateful parts by name, see the module docstring).
    Tensors, numbers, strings, lists and dicts only: it loads with ``torch.load(..., weights_only=True)``."""
    return {"step": int(step), "wall_s": float(wall_s), "world": int(trainer.proc.world),
            "trainer": trainer.state_dict()}


def load_loop_state(trainer, state: Mapping[str, Any]) -> None:
    """Restore :func:`loop_state`'s output into ``trainer``; a key that is missing or that the trainer does not have
    is an error naming it (:class:`~rlhf_exp.core.state.StateKeyError`)."""
    check_keys(state, ("step", "wall_s", "world", "trainer"), "the loop state")
    trainer.load_state_dict(state["trainer"])


# ---------------------------------------------------------------------------------------------------- checkpointer
def _resume_setting(value: Any) -> str | bool:
    if value is None or value is True or str(value).lower() in ("auto", "true"):
        return "auto"
    if value is False or str(value).lower() in ("false", "no", "never"):
        return False
    return str(value)


def _readable_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((Path(run_dir) / "summary.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


class Checkpointer:
    """Owns a run folder for one run: the lock, where the run starts (fresh, resumed, or already finished), saving
    checkpoints, and the SIGTERM/SIGINT handlers. Created by ``run()``; see the module docstring.

    Call order: :meth:`open` (every process; before the tracker opens the logs), then the loop's
    :func:`begin` / :func:`step_done`, then :meth:`close`.
    """

    def __init__(self, cfg, output_dir: Path, accelerator):
        tcfg = cfg.train
        self.cfg, self.run_dir, self.acc = cfg, Path(output_dir), accelerator
        self.folder = self.run_dir / CHECKPOINTS
        self.every = int(tcfg.get("checkpoint_every", 50) or 0)
        keep = tcfg.get("keep_checkpoints", 2)
        self.keep = None if keep is None or int(keep) <= 0 else int(keep)
        self.steps = int(tcfg.steps)
        self.resume_setting = _resume_setting(tcfg.get("resume", "auto"))
        self.enabled = self.every > 0
        self.lock: Optional[Path] = None
        self.plan: dict[str, Any] = {"action": "fresh"}
        self.stop_signal: Optional[str] = None
        self._old_handlers: dict[int, Any] = {}
        self.last_saved: Optional[tuple[int, Path]] = None
        self.save_seconds: list[float] = []
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ before the tracker
    def open(self) -> dict[str, Any]:
        """Take the folder (main process), decide how the run starts, cut ``metrics.jsonl``/``samples.jsonl`` back to
        the checkpoint's step, install the signal handlers. Returns the plan: ``{"action": "fresh" | "resume" |
        "skip", "path", "step", "summary"}`` (the same on every process)."""
        plan: dict[str, Any]
        if self.acc.is_main_process:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.lock = acquire_lock(self.run_dir)
                plan = self._decide()
            except Exception as e:  # every process raises the same error
                plan = {"action": "error", "type": type(e).__name__, "message": str(e)}
        else:
            plan = {}
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            holder = [plan]
            broadcast_object_list(holder, from_process=0)
            plan = holder[0]
        if plan["action"] == "error":
            release_lock(self.lock)
            self.lock = None
            err = RunFolderBusy if plan["type"] == "RunFolderBusy" else (
                FileExistsError if plan["type"] == "FileExistsError" else ValueError)
            raise err(plan["message"])
        self.plan = plan
        self._install_handlers()
        return plan

    def _decide(self) -> dict[str, Any]:
        """Main process: where the run starts. See the module docstring and docs/checkpoints.md."""
        run_dir, setting = self.run_dir, self.resume_setting
        has_run = any((run_dir / f).exists() for f in ("metrics.jsonl", "summary.json", CHECKPOINTS))
        if setting is False:
            if has_run:
                raise FileExistsError(
                    f"train.resume=false, but the run folder {run_dir} already holds a run (metrics.jsonl, "
                    f"summary.json or checkpoints/). Use another folder (hydra.run.dir=...), or train.resume=auto to "
                    f"continue that run from its newest checkpoint.")
            return {"action": "fresh"}
        summary = _readable_summary(run_dir)
        if self.folder.is_dir():  # a save cut short by a kill leaves its temporary folder: never used, removed
            for p in self.folder.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
        if setting == "auto":
            found = newest_complete(self.folder)
            finished = summary.get("status") == "finished" and int(summary.get("steps", -1)) == self.steps
            if finished and (found is None or found[0] == self.steps):
                return {"action": "skip", "summary": summary}
            if found is None and summary.get("status") == "finished":
                raise FileExistsError(
                    f"{run_dir} holds a finished run of {summary.get('steps')} steps and no checkpoint to continue "
                    f"from (train.steps is now {self.steps}). Use another folder (hydra.run.dir=...), or start from a "
                    f"checkpoint of another run with train.resume=<path>.")
            if found is None:
                if has_run:
                    print(f"[rlhf_exp] {run_dir} holds an earlier attempt without a usable checkpoint: starting from "
                          f"step 0 (its metrics.jsonl and samples.jsonl lines are replaced).", flush=True)
                self._cut_logs(-1)
                with contextlib.suppress(FileNotFoundError):   # the earlier attempt's (failed) summary
                    (run_dir / "summary.json").unlink()
                return {"action": "fresh"}
            step, path = found
        else:
            path = Path(setting)
            if not (path / META).exists() and (path / CHECKPOINTS).is_dir():
                found = newest_complete(path / CHECKPOINTS)
                if found is None:
                    raise ValueError(f"train.resume={setting}: no complete checkpoint in {path / CHECKPOINTS}.")
                path = found[1]
            problem = checkpoint_problem(path) if path.is_dir() else "not a folder"
            if problem is not None:
                raise ValueError(f"train.resume={setting}: {path} is not a usable checkpoint ({problem}). Pass a "
                                 f"checkpoints/step_<k> folder or a run folder, or train.resume=auto.")
            step = int(json.loads((path / META).read_text())["step"])
        if step > self.steps:
            raise ValueError(f"The checkpoint {path} is at step {step}, past train.steps={self.steps}. Set "
                             f"train.steps >= {step}, or resume from an earlier checkpoint (train.resume=<path>).")
        self._rewind_to(step, path, "damaged_" if setting == "auto" else "set_aside_")
        # older complete checkpoints, in case this one turns out unreadable while loading (auto only)
        older = [str(p) for s, p in reversed(list_checkpoints(self.folder))
                 if s < step and setting == "auto" and checkpoint_problem(p) is None]
        return {"action": "resume", "path": str(path), "step": step, "fallbacks": older}

    def _rewind_to(self, step: int, path: Path, prefix: str) -> None:
        """Main process, before resuming from ``path`` (at ``step``): rename this run's newer checkpoints
        ``<prefix>step_<k>`` (damaged, or not on the path resumed from: kept, never used), cut the logs back to
        ``step``, remove the old ``summary.json`` (the run writes it again)."""
        if Path(path).parent.resolve() == self.folder.resolve():
            for s, p in list_checkpoints(self.folder):
                if s > step:
                    target = p.with_name(f"{prefix}{p.name}")
                    shutil.rmtree(target, ignore_errors=True)
                    p.rename(target)
        self._cut_logs(step)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "summary.json").unlink()

    def _cut_logs(self, step: int) -> None:
        for name in ("metrics.jsonl", "samples.jsonl"):
            n = cut_jsonl(self.run_dir / name, step)
            if n and step >= 0:
                print(f"[rlhf_exp] {name}: {n} line(s) after step {step} removed (they are computed again).",
                      flush=True)

    # ------------------------------------------------------------------ the loop's calls
    def attach(self, trainer) -> None:
        """Register the loop's learning-rate scheduler with accelerate (unless accelerate prepared it already)."""
        sched = getattr(trainer, "scheduler", None)
        known = [getattr(s, "scheduler", s) for s in self.acc._schedulers] + list(self.acc._custom_objects)
        if sched is not None and not any(sched is k for k in known):
            self.acc.register_for_checkpointing(sched)

    def begin(self, trainer) -> tuple[int, float]:
        """Load the checkpoint of the plan (if any). Returns ``(start step, t_start)`` where ``t_start`` is
        ``time.perf_counter()`` minus the wall time of the earlier segments (so ``summary.json`` covers them)."""
        self.attach(trainer)
        if self.plan.get("action") != "resume":
            self._t_start = time.perf_counter()
            return 0, self._t_start
        candidates = [Path(self.plan["path"])] + [Path(p) for p in self.plan.get("fallbacks", [])]
        for i, path in enumerate(candidates):
            saved_world = int(json.loads((path / META).read_text()).get("world", 1))
            if saved_world != self.acc.num_processes:
                raise ValueError(f"The checkpoint {path} was written by {saved_world} process(es); this run has "
                                 f"{self.acc.num_processes}. Resume with the same number of processes.")
            error = None
            try:
                with _quiet_accelerate():
                    self.acc.load_state(str(path))
                state = torch.load(path / LOOP_STATE.format(self.acc.process_index), map_location="cpu",
                                   weights_only=True)
                load_loop_state(trainer, state)
            except Exception as e:  # noqa: BLE001 - any unreadable content: fall back to the one before
                error = e
            if self.acc.num_processes > 1:
                t = torch.tensor([0.0 if error is None else 1.0], device=self.acc.device)
                if float(self.acc.reduce(t, reduction="sum")) > 0 and error is None:
                    error = RuntimeError("another process could not read its part")
            if error is None:
                break
            if i + 1 == len(candidates):
                raise RuntimeError(f"Could not load the checkpoint {path} ({type(error).__name__}: {error}) and no "
                                   f"older complete checkpoint is left. Start a new run in another folder, or "
                                   f"train.resume=<path> to a checkpoint elsewhere.") from error
            if self.acc.is_main_process:
                older = candidates[i + 1]
                print(f"[rlhf_exp] checkpoint {path} is damaged ({type(error).__name__}: {error}); falling back to "
                      f"{older}.", flush=True)
                self._rewind_to(int(json.loads((older / META).read_text())["step"]), older, "damaged_")
            self.acc.wait_for_everyone()
        step = int(state["step"])
        if self.acc.is_main_process:
            print(f"[rlhf_exp] resumed from {path} (step {step} of {self.steps}).", flush=True)
        self.last_saved = (step, path)
        self._t_start = time.perf_counter() - float(state["wall_s"])
        return step, self._t_start

    def elapsed(self) -> float:
        """Wall seconds of the whole run so far, earlier segments included."""
        return time.perf_counter() - self._t_start

    def step_done(self, trainer, step: int, t_start: float) -> None:
        """After step ``step`` is logged: save when due (every ``checkpoint_every`` steps, at the last step, and when a
        stop was asked for), then stop with :class:`RunInterrupted` if SIGTERM / SIGINT arrived."""
        stop = self._stop_agreed()
        due = self.enabled and (step % self.every == 0 or step == self.steps)
        saved = None
        if due or stop:
            saved = self.save(trainer, step, time.perf_counter() - t_start)
        if stop:
            raise RunInterrupted(self.stop_signal or "SIGTERM", step, saved)

    def _stop_agreed(self) -> bool:
        """Whether any process received a stop signal (all processes stop at the same step)."""
        flag = self.stop_signal is not None
        if self.acc.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        if float(self.acc.reduce(t, reduction="sum")) > 0:
            self.stop_signal = self.stop_signal or "SIGTERM"
            return True
        return False

    # ------------------------------------------------------------------ saving
    def save(self, trainer, step: int, wall_s: float) -> Optional[Path]:
        """Write ``checkpoints/step_<step>`` (every process takes part). On an ``OSError`` (a full disk) the
        temporary folder is removed, the previous checkpoints are kept, and a notice says what would be lost;
        returns None then."""
        acc, main = self.acc, self.acc.is_main_process
        final = self.folder / f"{STEP_PREFIX}{step}"
        tmp = self.folder / f".tmp-{STEP_PREFIX}{step}"
        t0 = time.perf_counter()
        error: Optional[BaseException] = None
        try:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            with _quiet_accelerate():
                acc.save_state(str(tmp))
            torch.save(loop_state(trainer, step, wall_s), tmp / LOOP_STATE.format(acc.process_index))
        except OSError as e:
            error = e
        if acc.num_processes > 1:
            t = torch.tensor([0.0 if error is None else 1.0], device=acc.device)
            if float(acc.reduce(t, reduction="sum")) > 0 and error is None:
                error = OSError("another process could not write its part")
        if main and error is None:
            try:
                files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
                meta = {"step": step, "steps": self.steps, "world": acc.num_processes, "files": files,
                        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "save_s": round(time.perf_counter() - t0, 3)}
                atomic_write_text(tmp / META, json.dumps(meta, indent=2))
                _swap_in(tmp, final)
            except OSError as e:
                error = e
        if main and error is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = newest_complete(self.folder, quiet=True)
            since = f"step {kept[0]} ({kept[1]})" if kept else "the start of the run (no checkpoint is complete)"
            print(f"[rlhf_exp] WARNING: the checkpoint of step {step} could not be written ({type(error).__name__}: "
                  f"{error}). The earlier checkpoints are kept; if the run stops now, steps after {since} are lost. "
                  f"Free disk space in {self.folder}; the run goes on.", file=sys.stderr, flush=True)
        acc.wait_for_everyone()
        if error is not None:
            return None
        self.save_seconds.append(time.perf_counter() - t0)
        self.last_saved = (step, final)
        if main:
            self._prune()
        return final

    def _prune(self) -> None:
        if self.keep is None:
            return
        for _, p in list_checkpoints(self.folder)[:-self.keep]:
            shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ signals
    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop at once
                self._restore_handlers()
                raise KeyboardInterrupt
            return
        self.stop_signal = name
        if self.acc.is_main_process:
            print(f"\n[rlhf_exp] {name} received: saving a checkpoint at the end of this step, then stopping "
                  f"(Ctrl-C again stops at once, without a checkpoint).", file=sys.stderr, flush=True)

    def _restore_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_handlers = {}

    def close(self) -> None:
        """Restore the signal handlers and release the lock."""
        self._restore_handlers()
        release_lock(self.lock)
        self.lock = None


@contextlib.contextmanager
def _quiet_accelerate() -> Iterator[None]:
    """accelerate logs every file it writes at INFO level; keep the run's output readable."""
    import logging

    lg = logging.getLogger("accelerate")
    level = lg.level
    lg.setLevel(logging.ERROR)      # also its notice that GPT-2's tied lm_head is stored once (it is re-tied on load)
    try:
        yield
    finally:
        lg.setLevel(level)


# ---------------------------------------------------------------------------------------------------- loop calls
def begin(trainer) -> tuple[int, float]:
    """At the start of a loop's ``train()``: ``(start step, t_start)``; ``(0, now)`` without a checkpointer."""
    ck = getattr(trainer, "checkpointer", None)
    return ck.begin(trainer) if ck is not None else (0, time.perf_counter())


def step_done(trainer, step: int, t_start: float) -> None:
    """After a loop has logged step ``step``: save a checkpoint when due; stop when a signal asked for it."""
    ck = getattr(trainer, "checkpointer", None)
    if ck is not None:
        ck.step_done(trainer, step, t_start)
