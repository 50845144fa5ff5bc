"""Is a run's worker still alive? A pid alone cannot say (pids are reused), so a run records its
worker's pid and that process's create time, and both must match."""
from __future__ import annotations

import psutil


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process created at ``create_time``."""
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(proc.create_time() - float(create_time)) > 1.0:
            return False  # the pid was reused by another process
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def create_time(pid: int) -> float | None:
    """When process ``pid`` started (psutil's clock), or None if it cannot be read."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None

