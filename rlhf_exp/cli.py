"""The command line around Hydra: checks of the overrides before composition, a one-line report of a run that could
not start, and the end-of-sweep report (the sweep folder and the ``compare`` command for it)."""
from __future__ import annotations

import shutil
import sys
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
    print(f"{PREFIX} error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


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
