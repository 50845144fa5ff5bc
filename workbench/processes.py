"""Is a run's worker still alive? A pid alone cannot say (pids are reused), so a run records its
worker's pid and that process's create time, and both must match. And how many cores a worker
may use."""
from __future__ import annotations

import os

import psutil

THREADS_ENV = "OMP_NUM_THREADS"  # torch's CPU thread pool reads it when it starts


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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads_per_worker(workers: int) -> int:
    """Threads for each of ``workers`` CPU runs sharing this machine. Each torch process would
    otherwise start one thread per core, and k runs on n cores oversubscribe them k times over:
    OpenMP threads spin while they wait for each other, and two 2-thread runs on 2 cores were
    measured 3-6× slower per step than one run after the other."""
    return max(1, usable_cores() // max(1, workers))
