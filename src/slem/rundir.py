"""Run directories: one writer at a time, and no file half-written.

Every command that writes a run directory (``slem train``, ``slem apply``, ``slem hpo``)
holds :func:`lock_run_dir` for as long as it writes, so a second writer of the same
directory stops with a one-line error instead of interleaving its files with the first.
The lock is an OS-level lock (``filelock``) on ``DIR/.lock``: it is released when the
process ends, however it ends (a SIGKILLed writer leaves no stale lock behind).

:func:`atomic_write_text` / :func:`atomic_write_bytes` write to a temporary file in the same
directory and ``os.replace`` it into place, so a reader never sees a partial file. Files are
created with the user's umask (``tempfile`` would create them 0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from slem.errors import SlemError

LOCK_NAME = ".lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_run_dir(path: str | Path) -> Path:
    """Create ``path`` (and its parents); a path that cannot be a directory is a SlemError."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SlemError(f"cannot create run directory {out}: a file of that name exists") from None
    except NotADirectoryError:
        raise SlemError(
            f"cannot create run directory {out}: a part of the path is a file, not a directory"
        ) from None
    except PermissionError:
        raise SlemError(f"cannot create run directory {out}: permission denied") from None
    except OSError as exc:
        raise SlemError(f"cannot create run directory {out}: {exc.strerror or exc}") from None
    return out


@contextmanager
def lock_run_dir(path: str | Path, command: str = "slem") -> Iterator[Path]:
    """Create ``path`` if needed and hold its writer lock for the body.

    Raises:
        SlemError: the directory cannot be created, or another process is writing it.
    """
    out = make_run_dir(path)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SlemError(
            f"{out} is being written by another {command} process; wait for it to finish "
            "or choose another --out"
        ) from None
    except OSError as exc:
        raise SlemError(f"cannot lock run directory {out}: {exc.strerror or exc}") from None
    try:
        yield out
    finally:
        lock.release()


def is_locked(path: str | Path) -> bool:
    """Whether another process holds the writer lock of ``path`` (False if it has none)."""
    lock_file = Path(path) / LOCK_NAME
    if not lock_file.exists():
        return False
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (mode from the
    user's umask, as ``open`` would create it)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def fix_mode(path: str | Path) -> None:
    """Give a file written by a library that creates 0600 files (``tempfile``) the mode
    ``open`` would have given it under the user's umask."""
    os.chmod(path, 0o666 & ~_umask())


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a run's ``summary.json``, ``preprocessing.json``, ...).

    Raises:
        SlemError: the file is missing, unreadable, not JSON, or not a JSON object.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlemError(f"{p} could not be read ({exc}); restore it from a copy") from None
    if not isinstance(doc, dict):
        raise SlemError(f"{p} is damaged (not a JSON object)")
    return doc
