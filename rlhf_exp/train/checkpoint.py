"""Checkpoints and resume. The run-folder lock and the stop signals are :mod:`rlhf_exp.train.run_folder`; atomic file
writes, file modes, digests and log truncation are :mod:`rlhf_exp.files`.

A run writes ``<run dir>/checkpoints/step_<k>/`` every ``train.checkpoint_every`` steps and at its last step, and
keeps the newest ``train.keep_checkpoints``. A checkpoint holds:

* what ``accelerate.Accelerator.save_state`` saves: the model (policy with value head and LoRA adapters, as
  safetensors), the optimizer (sharded by the engine under FSDP / DeepSpeed) and every process's random states
  (python, numpy, torch, CUDA);
* ``scheduler.json``: the learning-rate scheduler's ``state_dict()`` (JSON: not accelerate's pickle);
* ``loop_state_rank<r>.pt``, one per process: the loop's own state (:func:`loop_state`): the step, the wall time so
  far, and ``trainer.state_dict()``, which composes the state of each stateful part by name: the metric history that
  ``summary.json`` is computed from, the KL controller's coefficient, the reward running moments, the objective's
  baselines (moving averages), the prompt sampler (the data position of the offline loop), the loop's named random
  generators (response lengths, shuffles). Only tensors, numbers, strings, lists and dicts: it is loaded with
  ``torch.load(..., weights_only=True)``, which runs no code;
* ``meta.json``, written last: the step, the size and sha256 of every file, and the settings that decide what the
  checkpoint holds (:data:`CHECKPOINT_KEYS`). A checkpoint without it, or whose files do not have the recorded sizes
  and digests, is damaged: resume falls back to the one before, with a notice.

Loading runs no code a checkpoint could carry: safetensors, JSON, and ``torch.load(weights_only=True)`` for the
rest (the optimizer and random states through accelerate's loader, the loop state here). Every checkpoint is written
into a temporary folder that is renamed when complete, so a kill during a save leaves the previous checkpoints as
they were; a failed save (a full disk, whatever type the library raises) removes its partial files, keeps the
earlier checkpoints and says what would be lost. Nothing in a folder that holds a run is changed before the new
command is known to continue it (:class:`Checkpointer`).

The loops use two calls (:func:`begin` at the start, :func:`step_done` after each step is logged); ``run()`` in
``rlhf_exp.__main__`` creates a :class:`Checkpointer`, which also owns the run folder (a lock file naming the owner
process) and turns SIGTERM / SIGINT into "save at the next step boundary, then stop" (a second one: stop at once).
User documentation: docs/checkpoints.md and docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

from rlhf_exp.core.state import check_keys
from rlhf_exp.files import HASH, _swap_in, atomic_write_text, cut_jsonl, file_digest, usual_modes
from rlhf_exp.train.run_folder import (RunAborted, RunFolderBusy, RunInterrupted, StopSignals,  # noqa: F401 (RunAborted:
                                      acquire_lock, release_lock)                      # for the callers' except)

CHECKPOINTS = "checkpoints"
META = "meta.json"
LOOP_STATE = "loop_state_rank{}.pt"
SCHEDULER = "scheduler.json"
STEP_PREFIX = "step_"


class ResumeRefused(ValueError):
    """The run folder (or the checkpoint of ``train.resume=<path>``) holds a run that this command cannot continue;
    nothing in it was changed."""


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


def checkpoint_problem(path: Path, hashes: bool = True) -> Optional[str]:
    """Why the checkpoint folder ``path`` fails its own integrity check (None when it passes): ``meta.json`` missing
    or unreadable, or a file it lists missing, of another size (cut short) or, with ``hashes``, with another
    :data:`HASH` digest than the one recorded at save. Whether this run's config can load it is another question
    (:meth:`Checkpointer._check_config`)."""
    try:
        meta = json.loads((Path(path) / META).read_text())
        files = dict(meta["files"])
        int(meta["step"])
    except FileNotFoundError:
        return f"{META} is missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{META} is unreadable ({type(e).__name__}: {e})"
    for name, entry in files.items():
        f = Path(path) / name
        size, digest = (entry, None) if isinstance(entry, int) else (entry.get("size"), entry.get(HASH))
        if not f.exists():
            return f"{name} is missing"
        if f.stat().st_size != int(size):
            return f"{name} has {f.stat().st_size} bytes instead of {size} (cut short)"
        if hashes and digest is not None and file_digest(f) != digest:
            return f"{name} does not have the {HASH} digest recorded at save (its content changed)"
    return None


def newest_complete(folder: Path, quiet: bool = False) -> Optional[tuple[int, Path]]:
    """The newest checkpoint in ``folder`` that passes its integrity check; each damaged newer one is named in a
    notice (unless ``quiet``)."""
    return _newest_intact_in(folder, quiet)[0]


# ---------------------------------------------------------------------------------------------------- config
RESUME_FREE_KEYS = ("train.steps", "train.resume", "train.checkpoint_every", "train.keep_checkpoints", "logger.",
                    "run_name", "device")
# Settings that change what a checkpoint holds: the weights (which model, its dtype, the value head that the objective
# asks for, the LoRA adapters), the optimizer state (its parameters, the fp16 scaler), the loop's objects (the
# objective's, the position in the training data). A run folder or checkpoint written with other values is refused,
# not resumed: loading it would fail half-way or continue another experiment.
CHECKPOINT_KEYS = ("objective.name", "objective.kind", "objective.baseline", "reward.normalize", "model.path",
                   "model.dtype", "model.lora.r", "model.lora.alpha", "model.lora.target_modules",
                   "train.mixed_precision", "dataset.name", "dataset.kind",
                   "dataset.path", "dataset.data_files", "dataset.config_name", "dataset.train_split",
                   "dataset.train_size", "dataset.offline_train_size", "dataset.seed")


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
            if not _same(a.get(k), b.get(k)) and not any(k == f or (f.endswith(".") and k.startswith(f))
                                                         for f in RESUME_FREE_KEYS)]


def checkpoint_settings(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`CHECKPOINT_KEYS` of a resolved config (recorded in each checkpoint's ``meta.json``)."""
    flat = _flatten(resolved)
    return {k: v for k, v in flat.items()
            if k in CHECKPOINT_KEYS or any(k.startswith(c + ".") for c in CHECKPOINT_KEYS)}


def held_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each of the :data:`CHECKPOINT_KEYS` that differ (``old``/``new``: resolved configs, or
    the flat settings of :func:`checkpoint_settings`)."""
    a, b = checkpoint_settings(_unflat(old)), checkpoint_settings(_unflat(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if not _same(a.get(k), b.get(k))]


def _same(a: Any, b: Any) -> bool:
    """Equal settings; the embedded assets (``${asset:...}``, resolved to a path inside the installed package) are
    the same wherever the package is installed."""
    if a == b:
        return True
    marker = "/rlhf_exp/assets/"
    return isinstance(a, str) and isinstance(b, str) and marker in a and marker in b and \
        a.rsplit(marker, 1)[1] == b.rsplit(marker, 1)[1]


def _unflat(d: Mapping[str, Any]) -> dict[str, Any]:
    """A nested dict from one whose keys may be dotted (``meta.json``'s settings); nested dicts pass through."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        node = out
        *parents, leaf = str(k).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    return out


def lr_jump(scheduler, fresh_base_lrs: list[float]) -> Optional[tuple[float, float]]:
    """``(the run's learning rate, this config's)`` at the step a loaded scheduler is at, when they differ: this run's
    schedule (its own ``lr_lambdas`` and ``train.lr``, ``fresh_base_lrs``) would give another value there than the
    run had (the loaded ``_last_lr``). A linear or cosine schedule's learning rate depends on the total number of
    optimizer steps, so more ``train.steps`` moves it. None when they agree (or the scheduler is no ``LambdaLR``)."""
    import math

    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        return None
    step = int(scheduler.last_epoch)
    for base, fn, had in zip(fresh_base_lrs, lambdas, scheduler.get_last_lr()):
        now = float(base) * float(fn(step))
        if not math.isclose(now, float(had), rel_tol=1e-6, abs_tol=1e-12):
            return float(had), now
    return None


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

    Nothing in a folder that holds a run is changed before this run may continue it: :meth:`open` compares the
    command's settings with the run's (``config_resolved.yaml``) and refuses a change of what a checkpoint holds
    (:data:`CHECKPOINT_KEYS`), or any change in a finished run's folder; a checkpoint counts as damaged only when it
    fails its own integrity check (:func:`checkpoint_problem`); the logs are cut back, damaged checkpoints set aside
    and the run's config rewritten only once the checkpoint has loaded (:meth:`begin`). ``owns_folder`` says whether
    this run may write into the folder (a refused or failed resume leaves it as it was).
    """

    def __init__(self, cfg, output_dir: Path, accelerator, resolved: Optional[Mapping[str, Any]] = None):
        tcfg = cfg.train
        self.cfg, self.run_dir, self.acc = cfg, Path(output_dir), accelerator
        self.resolved = dict(resolved) if resolved is not None else None
        self.folder = self.run_dir / CHECKPOINTS
        self.every = int(tcfg.checkpoint_every or 0)
        keep = tcfg.keep_checkpoints
        self.keep = None if keep is None or int(keep) <= 0 else int(keep)
        self.steps = int(tcfg.steps)
        self.resume_setting = _resume_setting(tcfg.resume)
        self.enabled = self.every > 0
        self.lock: Optional[Path] = None
        self.plan: dict[str, Any] = {"action": "fresh"}
        self.owns_folder = False
        self.record_config = None        # called (main process) when this run takes the folder: writes its config
        self.signals = StopSignals(announce=accelerator.is_main_process, on_abort=self.write_abort_summary,
                                   where=self._abort_where)
        self._abort_lock = threading.Lock()
        self._abort_written = False
        self._changes: list[str] = []
        self.last_saved: Optional[tuple[int, Path]] = None
        self.step_reached = 0
        self.scheduler = None
        self.save_seconds: list[float] = []
        self._t_start = time.perf_counter()

    @property
    def stop_signal(self) -> Optional[str]:
        """The first stop signal received (``SIGTERM`` / ``SIGINT``), or None."""
        return self.signals.stop_signal

    @stop_signal.setter
    def stop_signal(self, name: Optional[str]) -> None:
        self.signals.stop_signal = name

    # ------------------------------------------------------------------ before the tracker
    def open(self) -> dict[str, Any]:
        """Take the folder (main process) and decide how the run starts; install the signal handlers. Returns the
        plan: ``{"action": "fresh" | "resume" | "skip", "path", "step", "summary"}`` (the same on every process).
        Raises :class:`ResumeRefused` (nothing in the folder changed), :class:`RunFolderBusy`, ``FileExistsError``
        (``train.resume=false``) or ``ValueError`` (an unusable ``train.resume=<path>``)."""
        plan: dict[str, Any]
        if self.acc.is_main_process:
            try:
                try:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    self.lock = acquire_lock(self.run_dir)
                except (RunFolderBusy, FileExistsError):
                    raise
                except OSError as e:
                    raise ResumeRefused(
                        f"The run folder {self.run_dir} cannot be written ({type(e).__name__}: {e.strerror or e}). "
                        f"Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir for a sweep).") from e
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
            err = {"RunFolderBusy": RunFolderBusy, "FileExistsError": FileExistsError,
                   "ResumeRefused": ResumeRefused}.get(plan["type"], ValueError)
            raise err(plan["message"])
        self.plan = plan
        if plan["action"] == "fresh":
            self._take_folder()
        self.signals.install()
        return plan

    def _take_folder(self) -> None:
        self.owns_folder = True
        if self.acc.is_main_process and self.record_config is not None:
            self.record_config()

    def _decide(self) -> dict[str, Any]:
        """Main process: where the run starts. See the module docstring and docs/checkpoints.md. Everything is
        checked before anything in the folder changes."""
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
        if _holds_results(run_dir):
            self._check_run_config(summary, same_steps_finished=setting == "auto")
        if setting == "auto":
            found, damaged = self._newest_intact()
            finished = summary.get("status") == "finished" and int(summary.get("steps", -1)) == self.steps
            if finished and (found is None or found[0] == self.steps):
                return {"action": "skip", "summary": summary}
            if found is None and summary.get("status") == "finished":
                raise ResumeRefused(
                    f"{run_dir} holds a finished run of {summary.get('steps')} steps and no checkpoint to continue "
                    f"from (train.steps is now {self.steps}). Use another folder (hydra.run.dir=...), or start from a "
                    f"checkpoint of another run with train.resume=<path>.")
            if found is None and self._changes and _holds_results(run_dir):
                raise ResumeRefused(
                    f"{run_dir} holds an earlier attempt without a usable checkpoint, with other settings: "
                    f"{'; '.join(self._changes)}. Starting over would replace its metrics with those of another "
                    f"experiment; nothing in the folder was changed. Run this command in another folder "
                    f"(hydra.run.dir=<new folder>).")
            self._remove_partial_saves()
            if found is None:
                if has_run:
                    print(f"[rlhf_exp] {run_dir} holds an earlier attempt without a usable checkpoint: starting from "
                          f"step 0 (its metrics.jsonl and samples.jsonl lines are replaced).", flush=True)
                self._set_aside(damaged, "damaged_")
                self._cut_logs(-1)
                with contextlib.suppress(FileNotFoundError):   # the earlier attempt's (failed) summary
                    (run_dir / "summary.json").unlink()
                return {"action": "fresh"}
            step, path = found
            prefix = "damaged_"
        else:
            path = Path(setting)
            if not (path / META).exists() and (path / CHECKPOINTS).is_dir():
                found, _ = _newest_intact_in(path / CHECKPOINTS, quiet=True)
                if found is None:
                    raise ResumeRefused(f"train.resume={setting}: no complete checkpoint in {path / CHECKPOINTS}.")
                path = found[1]
            problem = checkpoint_problem(path) if path.is_dir() else "not a folder"
            if problem is not None:
                raise ResumeRefused(f"train.resume={setting}: {path} is not a usable checkpoint ({problem}). Pass a "
                                    f"checkpoints/step_<k> folder or a run folder, or train.resume=auto.")
            self._check_checkpoint_settings(path, setting)
            step, damaged, prefix = int(json.loads((path / META).read_text())["step"]), [], "set_aside_"
        if step > self.steps:
            raise ResumeRefused(f"The checkpoint {path} is at step {step}, past train.steps={self.steps}. Set "
                                f"train.steps >= {step}, or resume from an earlier checkpoint (train.resume=<path>).")
        return {"action": "resume", "path": str(path), "step": step, "damaged": [str(p) for p in damaged],
                "prefix": prefix, "changes": self._changes}

    def _newest_intact(self) -> tuple[Optional[tuple[int, Path]], list[Path]]:
        return _newest_intact_in(self.folder)

    def _remove_partial_saves(self) -> None:
        """A save cut short by a kill leaves its temporary folder: never used, removed."""
        if self.folder.is_dir():
            for p in self.folder.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)

    def _check_run_config(self, summary: Mapping[str, Any], same_steps_finished: bool) -> None:
        """Refuse (:class:`ResumeRefused`, nothing changed) a command whose settings differ from the run in the
        folder in what its checkpoints hold, or, for a finished run of the same ``train.steps``, in anything that
        is not free to change (``auto`` would otherwise report the old run as this command's result). Other
        differences are named in a notice (the new values apply)."""
        saved = self.run_dir / "config_resolved.yaml"
        if self.resolved is None or not saved.exists():
            return
        try:
            from omegaconf import OmegaConf

            old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        except Exception as e:  # noqa: BLE001 - an unreadable record cannot be compared
            print(f"[rlhf_exp] {saved} is unreadable ({type(e).__name__}); the settings of the run in {self.run_dir} "
                  f"cannot be compared with this command's.", flush=True)
            return
        status = summary.get("status") or "unfinished (no summary.json)"
        steps = summary.get("steps")
        what = f"{status.split(':')[0]}{f' after {steps} steps' if steps is not None else ''}"
        held = held_changes(old, self.resolved)
        if held:
            raise ResumeRefused(
                f"{self.run_dir} holds a run ({what}) whose checkpoints cannot continue with this command's settings: "
                f"{'; '.join(held)}. Nothing in the folder was changed. Run this command in another folder "
                f"(hydra.run.dir=<new folder>), or rerun the original command to continue that run (train.resume=false "
                f"makes any folder that already holds a run an error instead).")
        changes = config_changes(old, self.resolved)
        finished = summary.get("status") == "finished" and int(summary.get("steps", -1)) == self.steps
        if changes and finished and same_steps_finished:
            raise ResumeRefused(
                f"{self.run_dir} holds a run ({what}) with other settings: {'; '.join(changes)}. Nothing was "
                f"run and nothing in the folder was changed. Run this command in another folder "
                f"(hydra.run.dir=<new folder>).")
        self._changes = changes      # named once the checkpoint has loaded (begin)

    def _check_checkpoint_settings(self, path: Path, setting: str) -> None:
        """``train.resume=<path>``: refuse a checkpoint whose recorded :data:`CHECKPOINT_KEYS` differ."""
        if self.resolved is None:
            return
        held = json.loads((Path(path) / META).read_text()).get("settings")
        if not held:
            return
        diff = held_changes(held, self.resolved)
        if diff:
            raise ResumeRefused(
                f"train.resume={setting}: the checkpoint {path} was written with other settings of what it holds: "
                f"{'; '.join(diff)}. It cannot be loaded into this run; nothing was changed. Use that run's settings, "
                f"or start without train.resume.")

    def _set_aside(self, paths: list[Path], prefix: str) -> None:
        for p in paths:
            p = Path(p)
            target = p.with_name(f"{prefix}{p.name}")
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):
                p.rename(target)

    def _rewind_to(self, step: int, path: Path, prefix: str, damaged: list[Path]) -> None:
        """Main process, once the checkpoint at ``path`` (``step``) has loaded: set aside the checkpoints that failed
        their integrity check (``damaged_step_<k>``) and, with ``train.resume=<path>`` into its own folder, this
        run's newer ones (``set_aside_step_<k>``): kept, never used. Then cut the logs back to ``step`` and remove
        the old ``summary.json`` (the run writes it again)."""
        self._set_aside(damaged, "damaged_")
        if Path(path).parent.resolve() == self.folder.resolve():
            self._set_aside([p for s, p in list_checkpoints(self.folder) if s > step], prefix)
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
        """The loop's learning-rate scheduler, saved by this class as ``scheduler.json`` (unless accelerate prepared
        it: then accelerate saves it and loads it with ``weights_only=True``)."""
        sched = getattr(trainer, "scheduler", None)
        prepared = [getattr(s, "scheduler", s) for s in self.acc._schedulers]
        self.scheduler = None if sched is None or any(sched is k for k in prepared) else sched

    def begin(self, trainer) -> tuple[int, float]:
        """Load the checkpoint of the plan (if any). Returns ``(start step, t_start)`` where ``t_start`` is
        ``time.perf_counter()`` minus the wall time of the earlier segments (so ``summary.json`` covers them)."""
        self.attach(trainer)
        if self.plan.get("action") != "resume":
            self._t_start = time.perf_counter()
            self._stop_if_asked(0, None)
            return 0, self._t_start
        path = Path(self.plan["path"])
        meta = json.loads((path / META).read_text())
        saved_world = int(meta.get("world", 1))
        if saved_world != self.acc.num_processes:
            raise ResumeRefused(f"The checkpoint {path} was written by {saved_world} process(es); this run has "
                                f"{self.acc.num_processes}. Resume with the same number of processes.")
        error = None
        try:
            state = self._load(trainer, path)
            jump = lr_jump(self.scheduler, self._fresh_base_lrs) if self.scheduler is not None else None
            if jump is not None:
                raise ResumeRefused(self._lr_jump_message(path, meta, jump))
        except Exception as e:  # noqa: BLE001 - any problem: the same error on every process, nothing changed
            error = e
        if self.acc.num_processes > 1:
            t = torch.tensor([0.0 if error is None else 1.0], device=self.acc.device)
            if float(self.acc.reduce(t, reduction="sum")) > 0 and error is None:
                error = ResumeRefused(f"another process could not load its part of {path}; nothing was changed.")
        if error is not None:
            if isinstance(error, ResumeRefused):
                raise error
            raise ResumeRefused(
                f"The checkpoint {path} passed its integrity check but cannot be loaded into this run "
                f"({type(error).__name__}: {_one_line(error)}). Nothing in {self.run_dir} was changed. If it comes "
                f"from another version of rlhf_exp, resume it with that version; otherwise start a new run "
                f"(hydra.run.dir=<new folder>).") from error
        step = int(state["step"])
        if self.acc.is_main_process:
            self._rewind_to(step, path, self.plan.get("prefix", "damaged_"), [Path(p) for p in self.plan["damaged"]])
            if self.plan.get("changes"):
                print(f"[rlhf_exp] resuming with settings that differ from this run's start (the new ones apply; the "
                      f"continuation is no longer that of one uninterrupted run): {'; '.join(self.plan['changes'])}",
                      flush=True)
            print(f"[rlhf_exp] resumed from {path} (step {step} of {self.steps}).", flush=True)
        self._take_folder()
        self.acc.wait_for_everyone()
        self.last_saved = (step, path)
        self.step_reached = step
        self._t_start = time.perf_counter() - float(state["wall_s"])
        self._stop_if_asked(step, path)
        return step, self._t_start

    def _lr_jump_message(self, path: Path, meta: Mapping[str, Any], jump: tuple[float, float]) -> str:
        tcfg = self.cfg.train
        changed = []
        if int(meta.get("steps", self.steps)) != self.steps:
            changed.append(f"train.steps {meta.get('steps')} -> {self.steps}")
        loaded = [float(x) for x in self.scheduler.base_lrs]
        if any(abs(a - b) > 1e-12 for a, b in zip(loaded, self._fresh_base_lrs)):
            changed.append(f"train.lr {loaded[0]:.6g} -> {self._fresh_base_lrs[0]:.6g}")
        why = f" ({', '.join(changed)})" if changed else ""
        return (f"Resuming {path} would make the learning rate jump from {jump[0]:.6g} to {jump[1]:.6g}{why}: under "
                f"train.lr_schedule={tcfg.lr_schedule} the learning rate of each step depends on train.lr and on the "
                f"total number of optimizer steps (train.steps, epochs, batch sizes, warmup_steps). The resumed run is "
                f"refused rather than continued on another schedule. Resume with the run's own settings, or start a "
                f"new run; a schedule that does not depend on the length (train.lr_schedule=constant or "
                f"constant_with_warmup) can be extended with more train.steps. Nothing was changed.")

    def _load(self, trainer, path: Path) -> Mapping[str, Any]:
        """Load a checkpoint into the loop without unpickling code: the weights from safetensors, the optimizer and
        random states with ``torch.load(weights_only=True)`` (accelerate's loader; the random states are checked
        here first, as accelerate would skip an unreadable one silently), the scheduler from JSON and the loop
        state with ``weights_only=True``. A pickle that would run code fails to load (``UnpicklingError``)."""
        from accelerate.utils import load as accelerate_load

        pickles = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
        if pickles:
            raise ResumeRefused(
                f"The checkpoint {path} holds {', '.join(pickles)}, a pickle (how earlier versions saved the "
                f"learning-rate scheduler). It is not loaded: unpickling can run any code the file carries. This "
                f"version saves the scheduler as {SCHEDULER}; resume that run with the version that wrote it, or start "
                f"a new run. Nothing was changed.")
        rng = path / f"random_states_{self.acc.process_index}.pkl"
        if rng.exists():
            try:
                accelerate_load(rng, map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise _unsafe(rng, e) from e
        self._fresh_base_lrs = list(self.scheduler.base_lrs) if self.scheduler is not None else []
        try:
            with _quiet_accelerate():
                self.acc.load_state(str(path))
        except Exception as e:  # noqa: BLE001
            if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
                raise _unsafe(path / "optimizer.bin", e) from e
            raise
        if self.scheduler is not None:
            self.scheduler.load_state_dict(json.loads((path / SCHEDULER).read_text()))
        state_file = path / LOOP_STATE.format(self.acc.process_index)
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise _unsafe(state_file, e) from e
        load_loop_state(trainer, state)
        return state

    def _stop_if_asked(self, step: int, path: Optional[Path]) -> None:
        """A stop signal that came while the run was being built: stop before the first step."""
        if self._stop_agreed():
            raise RunInterrupted(self.stop_signal or "SIGTERM", step, path)

    def elapsed(self) -> float:
        """Wall seconds of the whole run so far, earlier segments included."""
        return time.perf_counter() - self._t_start

    def step_done(self, trainer, step: int, t_start: float) -> None:
        """After step ``step`` is logged: save when due (every ``checkpoint_every`` steps, at the last step, and when a
        stop was asked for), then stop with :class:`RunInterrupted` if SIGTERM / SIGINT arrived."""
        self.step_reached = step
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
        """Write ``checkpoints/step_<step>`` (every process takes part). On any error of the write (a full disk, a
        quota, a read-only file system: ``OSError`` from Python, ``RuntimeError`` from torch's writer,
        ``SafetensorError`` from safetensors) the temporary folder is removed, the previous checkpoints are kept,
        and a one-line notice says what would be lost; returns None then. A stop (a second signal) during the
        save also removes the temporary folder."""
        acc, main = self.acc, self.acc.is_main_process
        final = self.folder / f"{STEP_PREFIX}{step}"
        tmp = self.folder / f".tmp-{STEP_PREFIX}{step}"
        t0 = time.perf_counter()
        error: Optional[BaseException] = None
        try:
            try:
                if main:
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir(parents=True)
                acc.wait_for_everyone()
                with _quiet_accelerate():
                    acc.save_state(str(tmp))
                torch.save(loop_state(trainer, step, wall_s), tmp / LOOP_STATE.format(acc.process_index))
                if main and self.scheduler is not None:
                    atomic_write_text(tmp / SCHEDULER, json.dumps(self.scheduler.state_dict()))
            except Exception as e:  # noqa: BLE001 - see the docstring
                error = e
            if acc.num_processes > 1:
                t = torch.tensor([0.0 if error is None else 1.0], device=acc.device)
                if float(acc.reduce(t, reduction="sum")) > 0 and error is None:
                    error = OSError("another process could not write its part")
            if main and error is None:
                try:
                    usual_modes(tmp)
                    files = {str(p.relative_to(tmp)): {"size": p.stat().st_size, HASH: file_digest(p)}
                             for p in sorted(tmp.rglob("*")) if p.is_file()}
                    meta = {"step": step, "steps": self.steps, "world": acc.num_processes, "files": files,
                            "settings": checkpoint_settings(self.resolved) if self.resolved is not None else {},
                            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "save_s": round(time.perf_counter() - t0, 3)}
                    atomic_write_text(tmp / META, json.dumps(meta, indent=2))
                    usual_modes(tmp)
                    _swap_in(tmp, final)
                except Exception as e:  # noqa: BLE001
                    error = e
        except BaseException:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if main and error is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            kept, _ = _newest_intact_in(self.folder, quiet=True, hashes=False)
            since = f"step {kept[0]} ({kept[1]})" if kept else "the start of the run (no checkpoint is complete)"
            print(f"\n[rlhf_exp] WARNING: the checkpoint of step {step} could not be written ({type(error).__name__}: "
                  f"{_one_line(error)}; {_free_space(self.folder)}). Its partial files were removed and the earlier "
                  f"checkpoints are kept; if the run stops now, steps after {since} are lost. Free disk space in "
                  f"{self.folder}; the run goes on.", file=sys.stderr, flush=True)
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

    # ------------------------------------------------------------------ a stop at once
    def _abort_where(self) -> str:
        if self.last_saved is not None:
            return f"The newest complete checkpoint is {self.last_saved[1]} (step {self.last_saved[0]})."
        return "No checkpoint was written in this segment of the run."

    def write_abort_summary(self, signame: str) -> None:
        """``summary.json`` of a run stopped at once by a second signal (main process, once; from the main thread or
        the watchdog): status ``interrupted``, the last completed step and the newest complete checkpoint. Nothing
        is written into a folder this run has not taken (a resume that had not loaded yet)."""
        with self._abort_lock:
            if self._abort_written or not self.acc.is_main_process or not self.owns_folder:
                return
            self._abort_written = True
            from rlhf_exp.tracking import write_summary

            try:
                write_summary(self.run_dir, {
                    "status": "interrupted", "objective": self.cfg.objective.name,
                    "kl_controller": self.cfg.kl.controller, "steps": self.step_reached, "wall_s": self.elapsed(),
                    "num_processes": self.acc.num_processes,
                    "checkpoint": str(self.last_saved[1]) if self.last_saved else None,
                    "stopped": f"a second {signame} stopped the run at once during step {self.step_reached + 1}, "
                               f"which is lost; the policy of the last step is not saved. {self._abort_where()}"})
            except Exception as e:  # noqa: BLE001
                print(f"[rlhf_exp] could not write summary.json ({type(e).__name__}: {e}).", file=sys.stderr,
                      flush=True)

    def close(self) -> None:
        """Give the signal handlers back, stop the watchdog and release the lock."""
        self.signals.close()
        release_lock(self.lock)
        self.lock = None


def _newest_intact_in(folder: Path, quiet: bool = False, hashes: bool = True
                      ) -> tuple[Optional[tuple[int, Path]], list[Path]]:
    """The newest checkpoint in ``folder`` that passes its integrity check, and the newer ones that fail it (each
    named in a notice unless ``quiet``)."""
    damaged: list[Path] = []
    for step, path in reversed(list_checkpoints(folder)):
        problem = checkpoint_problem(path, hashes=hashes)
        if problem is None:
            return (step, path), damaged
        damaged.append(path)
        if not quiet:
            print(f"[rlhf_exp] checkpoint {path} is damaged ({problem}); falling back to the one before.",
                  flush=True)
    return None, damaged


def _holds_results(run_dir: Path) -> bool:
    """Whether a run folder holds results worth protecting: checkpoints, or metrics (an attempt that failed before
    its first step holds neither)."""
    metrics = Path(run_dir) / "metrics.jsonl"
    return bool(list_checkpoints(Path(run_dir) / CHECKPOINTS)) or (metrics.exists() and metrics.stat().st_size > 0) \
        or _readable_summary(run_dir).get("status") == "finished"


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An error's message on one line (torch's C++ errors span several), cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free there"


def _unsafe(path: Path, error: BaseException) -> ResumeRefused:
    return ResumeRefused(
        f"{path} cannot be loaded without unpickling what it carries ({type(error).__name__}: {_one_line(error)}). "
        f"Checkpoints are loaded with torch.load(weights_only=True), which refuses anything but tensors and plain "
        f"data: this file is damaged or was crafted to run code. Nothing was run and nothing was changed; use a "
        f"checkpoint you trust.")


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
