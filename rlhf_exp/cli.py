"""The command line around Hydra: checks of the overrides before composition, a one-line report of a run that could
not start, and the end-of-sweep report (the sweep folder and the ``compare`` command for it)."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PREFIX = "[rlhf_exp]"


def command_line_overrides(argv: list[str]) -> list[str]:
    """The ``key=value`` overrides of a ``python -m rlhf_exp`` command line, as Hydra's own parser splits it."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return list(args.overrides or [])


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` as one line on stderr and exit: for runs that never started, no traceback."""
    print_once(f"{PREFIX} error: {one_line(message)}")
    raise SystemExit(code)


def one_line(message: object) -> str:
    """A message on one line (an exception's text may span several)."""
    return " ".join(str(message).split())


def print_once(line: str) -> None:
    """Print ``line`` on stderr; under torchrun / accelerate launch (``WORLD_SIZE`` > 1) only the first process of this
    machine that has this very line prints it, so a failure shared by every rank is printed once and a distinct one
    by each rank that has it. (The processes of one launch share their parent, the launcher; a marker file per
    line in the temporary folder decides.)"""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        folder = Path(tempfile.gettempdir()) / f"rlhf_exp-messages-{os.getppid()}-{os.environ.get('MASTER_PORT', '')}"
        try:
            folder.mkdir(exist_ok=True)
            os.close(os.open(folder / hashlib.sha256(line.encode()).hexdigest()[:32],
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return
        except OSError:
            pass
    _close_progress_bars()
    sys.stderr.flush()
    print(line, file=sys.stderr, flush=True)


def _close_progress_bars() -> None:
    """Close the tqdm bars a failure left open (the training loop's): closed later, at exit, they would be drawn
    after the line that explains the failure."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001 - cosmetic
        pass


HYDRA_RUN_FILES = {".hydra", "summary.json", "__main__.log", "config_resolved.yaml"}


def discard_unstarted_run(output_dir: Path) -> bool:
    """Remove the folder Hydra made for a run that never started (only Hydra's ``.hydra/``, an empty log, a failure
    ``summary.json``); a folder with anything else is left alone. Returns whether it was removed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return False
    if any(p.name not in HYDRA_RUN_FILES for p in output_dir.iterdir()):
        return False
    shutil.rmtree(output_dir, ignore_errors=True)
    for parent in list(output_dir.parents)[:2]:  # the date folder (and outputs/) Hydra made for it, when now empty
        if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()
    return True


def _shown(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it (what a user types), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


class _SweepState:
    sweep_dir: str | None = None
    finished = 0
    failed = 0
    reported = False


def sweep_report_lines() -> list[str]:
    """The end-of-sweep report: the folder with the job counts, then the compare command (the last line)."""
    s = _SweepState
    if s.sweep_dir is None:
        return []
    folder = _shown(s.sweep_dir)
    counts = f"{s.finished} finished" + (f", {s.failed} failed" if s.failed else "")
    return [f"{PREFIX} sweep folder: {folder} ({s.finished + s.failed} jobs: {counts})",
            f"{PREFIX} compare the runs: python -m rlhf_exp.compare {folder}"]


def print_sweep_report() -> None:
    """Print the report once (at the end of a multirun, or when a failed job ended it)."""
    if _SweepState.sweep_dir is None or _SweepState.reported:
        return
    _SweepState.reported = True
    sys.stderr.flush()
    print("\n".join(sweep_report_lines()), flush=True)


def check_writable(folder: str | Path, key: str) -> None:
    """Fail in one line (naming ``key``) when ``folder`` could not be created or written: its nearest existing
    folder is on a read-only file system or not writable by this user. Hydra would otherwise stop with its own
    traceback when it makes the folder."""
    target = Path(folder).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == target else f" (its folder {existing} cannot be written)"
        fail(f"the run folder {target} cannot be written{where}: {e.strerror or e}. Set {key}=<a writable folder>.")


class RunFolderCheck(Callback):
    """Hydra callback (``hydra.callbacks.run_folder_check`` in conf/config.yaml): before Hydra makes the run folder
    (``hydra.run.dir``) or the sweep folder (``hydra.sweep.dir``), check that it can be written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) > 0:   # ranks > 0 use a scratch folder (rlhf_exp.distributed)
            return
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        from omegaconf import OmegaConf

        try:
            folder = OmegaConf.select(config, key)
        except Exception:  # noqa: BLE001 - an interpolation Hydra itself will report
            return
        if folder:
            check_writable(folder, key)


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks.sweep_report`` in conf/config.yaml): counts the jobs of a multirun and, at
    its end, prints the sweep folder and the ``python -m rlhf_exp.compare`` command for it."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SweepState.sweep_dir = str(config.hydra.sweep.dir)
        _SweepState.finished = _SweepState.failed = 0
        _SweepState.reported = False

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if _SweepState.sweep_dir is None:
            return
        if job_return.status == JobStatus.COMPLETED:
            _SweepState.finished += 1
        else:
            _SweepState.failed += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_sweep_report()
