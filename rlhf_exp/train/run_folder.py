"""What a run holds its folder with: the lock file naming the owner process, and the SIGTERM / SIGINT handling that turns
a preemption into "save at the next step boundary, then stop" (a second signal: stop at once), with a watchdog for a
main thread blocked outside Python. The checkpoints themselves are :mod:`rlhf_exp.train.checkpoint`."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

LOCK = ".lock"


class RunInterrupted(KeyboardInterrupt):
    """The run stopped at a step boundary after SIGTERM / SIGINT, with a checkpoint saved (or none, if it failed).

    A ``KeyboardInterrupt``, so that it stops a Hydra multirun too. ``exit_code`` is 128 + the signal number."""

    def __init__(self, signame: str, step: int, checkpoint: Optional[Path]):
        self.signame, self.step, self.checkpoint = signame, step, checkpoint
        self.exit_code = 128 + int(getattr(signal, signame, signal.SIGTERM))
        super().__init__(f"stopped by {signame} after step {step}")


class RunAborted(KeyboardInterrupt):
    """A second SIGTERM / SIGINT: the run stops at once, without a checkpoint of the step it was in (the newest
    complete checkpoint is kept). ``exit_code`` is 128 + the signal number."""

    def __init__(self, signame: str):
        self.signame = signame
        self.exit_code = 128 + int(getattr(signal, signame, signal.SIGTERM))
        super().__init__(f"stopped at once by a second {signame}")


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


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


class StopSignals:
    """SIGTERM / SIGINT for one run. :meth:`install` (main thread), then read :attr:`stop_signal` at step boundaries;
    :meth:`close` gives the handlers back and stops the watchdog.

    ``announce``: print the notice (the main process only); ``on_abort(signame)``: called by the watchdog before it
    exits a process that did not stop :attr:`ABORT_GRACE_S` after a second signal (it writes ``summary.json``);
    ``where()``: the sentence that names the newest complete checkpoint."""

    REPEAT_WINDOW_S = 1.0   # a second stop signal this soon after the first is the same request (a launcher and its
    #                         process group both delivering one preemption, within milliseconds: torchrun forwards
    #                         SIGTERM, a terminal's Ctrl-C reaches every process); later, it stops the run at once
    ABORT_GRACE_S = 5.0     # after a second stop signal, the process exits by itself if it has not stopped by then

    def __init__(self, announce: bool, on_abort: Callable[[str], None], where: Callable[[], str]):
        self.announce, self.on_abort, self.where = announce, on_abort, where
        self.stop_signal: Optional[str] = None
        self._old_handlers: dict[int, Any] = {}
        self._first_stop_at = 0.0
        self._watchdog: Optional[tuple[Any, Any, Any, Any]] = None

    def install(self) -> None:
        """SIGTERM / SIGINT: the first asks for a checkpoint at the next step boundary and a stop; a second one (later
        than :attr:`REPEAT_WINDOW_S`) stops at once (:class:`RunAborted`). A watchdog thread sees the signals too
        (``signal.set_wakeup_fd``: written by the C-level handler even while the main thread is blocked outside
        Python, where a Python handler cannot run): if the process has not stopped :attr:`ABORT_GRACE_S` seconds
        after the second signal, it writes ``summary.json`` and exits."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            reader, writer = socket.socketpair()
            writer.setblocking(False)
            old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (OSError, ValueError):  # pragma: no cover - no wakeup fd: the Python-level handlers still work
            return
        thread = threading.Thread(target=self._watch, args=(reader,), daemon=True, name="rlhf_exp-stop-watchdog")
        self._watchdog = (reader, writer, old_fd, thread)
        thread.start()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.stop_signal is not None:
            if now - self._first_stop_at < self.REPEAT_WINDOW_S:
                return
            self.restore_handlers()
            raise RunAborted(name)
        self.stop_signal = name
        self._first_stop_at = now
        if self.announce:
            print(f"\n[rlhf_exp] {name} received: saving a checkpoint at the end of this step, then stopping "
                  f"(a second SIGTERM or Ctrl-C, a second or more later, stops at once, keeping the newest complete "
                  f"checkpoint).",
                  file=sys.stderr, flush=True)

    def _watch(self, reader) -> None:
        """The watchdog thread (see :meth:`install`)."""
        stops: list[float] = []
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in (signal.SIGTERM, signal.SIGINT):
                    continue
                now = time.monotonic()
                if not stops or now - stops[-1] >= self.REPEAT_WINDOW_S:
                    stops.append(now)
                if len(stops) == 2:
                    name = signal.Signals(signum).name
                    threading.Thread(target=self._exit_later, args=(name,), daemon=True).start()

    def _exit_later(self, name: str) -> None:
        time.sleep(self.ABORT_GRACE_S)
        if self._watchdog is None:      # closed: the run stopped by itself
            return
        self.on_abort(name)
        print(f"\n[rlhf_exp] the run did not stop within {self.ABORT_GRACE_S:g} s of the second {name} (it is "
              f"blocked outside Python: a C extension, a collective, I/O); exiting now. "
              f"{self.where()}", file=sys.stderr, flush=True)
        os._exit(128 + int(getattr(signal, name, signal.SIGTERM)))

    def restore_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_handlers = {}

    def close(self) -> None:
        """Give the signal handlers back and stop the watchdog."""
        self.restore_handlers()
        if self._watchdog is not None:
            reader, writer, old_fd, thread = self._watchdog
            self._watchdog = None
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(old_fd)
            with contextlib.suppress(OSError):
                reader.shutdown(socket.SHUT_RDWR)      # wakes the watchdog's recv: it returns b"" and the thread ends
            thread.join(timeout=2.0)
            for sock in (writer, reader):
                with contextlib.suppress(OSError):
                    sock.close()
