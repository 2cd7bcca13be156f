"""Files a run writes that must never be seen half-written: atomic file and folder writes, the usual file modes, file
digests, and cutting a ``*.jsonl`` log back to a step. No dependencies on the rest of the package (the tracker, the
checkpoints and the saved policy all use it)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

HASH = "sha256"     # of every checkpoint file, recorded in meta.json at save (hashlib: SHA-NI on current CPUs, ~1 GB/s)


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_modes(folder: Path) -> None:
    """Give every file under ``folder`` the mode a plain ``open()`` gives (``0o666`` less the umask: 0644 usually).
    Libraries that write through a private temporary file and rename it (safetensors) leave 0600, so colleagues
    who can read the metrics could not read the weights."""
    mode = 0o666 & ~_umask()
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink() and (p.stat().st_mode & 0o777) != mode:
            os.chmod(p, mode)


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """The :data:`HASH` hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends without error it replaces ``path`` (an older
    ``path`` is moved aside first and removed after). On an error the temporary folder is removed and ``path`` is
    left as it was. The files get the usual modes (:func:`usual_modes`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        usual_modes(tmp)
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
