"""Where training runs: CUDA, then Apple MPS, then the CPU, and the device's name in words."""
from __future__ import annotations

import os

import torch

from ..errors import ConfigError

def resolve_device(preference: str = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    pref = str(preference).strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {preference!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"device {preference!r} is not available here "
                          f"({torch.cuda.device_count()} CUDA devices); use 'auto' or 'cpu'.")
    if device.type == "mps" and not mps_ok:
        raise ConfigError(f"device {preference!r} is not available here; use 'auto' or 'cpu'.")
    return device


def device_description(device: torch.device | str) -> str:
    """Human-readable name, e.g. "NVIDIA H100 80GB HBM3 (cuda:0)", "CPU (2 cores)", or
    "CPU (1 thread of 2 cores)" when runs share the machine."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "mps":
        return "Apple GPU (mps)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type != "cpu":
        return str(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' * (threads > 1)} of {cores} cores)" if threads < cores else f"CPU ({cores} cores)"
