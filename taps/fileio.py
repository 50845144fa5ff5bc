"""Files written whole or not at all: a crash mid-write leaves the previous version intact."""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import DiskFullError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *,
                 concurrent_writers: bool = False) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path`` (rename is atomic on POSIX and Windows) and fsync the folder, so the new name
    survives a power cut. A full disk raises :class:`DiskFullError` naming ``path``.

    The temporary is ``<name>.tmp``, so a writer killed half-way leaves one file that the next
    write replaces. Where several processes or threads may write ``path`` at once (settings
    shared by launchers), ``concurrent_writers=True`` gives each writer its own temporary: with
    a shared one, a writer could rename away the file another is about to rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = f".{os.getpid()}-{threading.get_ident()}" if concurrent_writers else ""
    tmp = path.with_name(f"{path.name}{writer}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = _disk_full_cause(exc)
        if full is not None:
            previous = "the previous version is intact" if path.exists() else "nothing was written"
            raise DiskFullError(full.errno, f"cannot write {path}: the disk is full ({full.strerror or full}); "
                                            f"{previous}. Free some space, then try again (a run: resume it).",
                                str(path)) from exc
        raise
    _fsync_folder(path.parent)
    return path


def _disk_full_cause(exc: BaseException) -> OSError | None:
    """The "no space left" error behind ``exc``, if any. Writers may mask it: torch.save, failing
    to finish its zip file after a short write, raises a RuntimeError whose context it is."""
    seen = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, DiskFullError):
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_folder(folder: Path) -> None:
    """Persist a rename; folders cannot be opened for fsync on every platform (Windows)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
