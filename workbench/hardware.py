"""What this machine offers runs, without importing torch (the dashboard shows it, the launcher
hands it out): the visible GPUs, the cores this process may use and each CPU worker's share of
them, and a summary in words."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

THREADS_ENV = "OMP_NUM_THREADS"  # torch's CPU thread pool reads it when it starts


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads_per_worker(workers: int) -> int:
    """Threads for each of ``workers`` CPU runs sharing this machine. Each torch process would
    otherwise start one thread per core, and k runs on n cores oversubscribe them k times over:
    OpenMP threads spin while they wait for each other: with two 2-thread runs on 2 cores, a
    6-step epoch took 53 s instead of 3 s."""
    return max(1, usable_cores() // max(1, workers))


def visible_gpus() -> list[str]:
    """CUDA device indices this process may hand out, without importing torch:
    ``CUDA_VISIBLE_DEVICES`` if set, else one per line of ``nvidia-smi -L``, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [t.strip() for t in env.split(",") if t.strip()]
        out = []
        for t in ids:  # CUDA stops at the first invalid entry (e.g. -1)
            if t.lstrip("-").isdigit() and int(t) < 0:
                break
            out.append(t)
        return out
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    n = sum(1 for line in res.stdout.splitlines() if line.strip().startswith("GPU "))
    return [str(i) for i in range(n)]


def device_summary() -> str:
    """Where runs will train, in words, without importing torch (the dashboard shows this):
    the visible GPUs' names, else the CPU and its cores."""
    gpus = visible_gpus()
    if gpus:
        names = []
        exe = shutil.which("nvidia-smi")
        if exe is not None:
            try:
                res = subprocess.run([exe, "--query-gpu=index,name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=10)
                found = dict(line.split(", ", 1) for line in res.stdout.splitlines() if ", " in line)
                names = [found.get(g, f"GPU {g}") for g in gpus]
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
        names = names or [f"GPU {g}" for g in gpus]
        distinct = list(dict.fromkeys(names))
        return f"{len(gpus)} × {distinct[0]}" if len(distinct) == 1 else ", ".join(names)
    cores = usable_cores()
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return f"Apple GPU (mps), {cores} CPU cores"
    return f"CPU ({cores} cores)"
