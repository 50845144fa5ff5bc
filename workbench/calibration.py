"""How long a training step takes on *this* machine: a few timed training steps of the chosen
backbone, resolution, batch size and method on the chosen device, cached per machine and setting.

Two-core machines differ several-fold in step time (the same "AMD EPYC" name has covered 5–8×),
so a constant measured on one machine said nothing about the next. The probe builds the model the
trainer builds (random weights: loading pretrained ones changes nothing about speed), runs one
untimed warm-up step and then times up to ``PROBE_STEPS`` steps within ``PROBE_BUDGET_S``, plus one
evaluation batch. Results are kept in ``$TAPS_CACHE_DIR/step_times.json`` (default
``~/.cache/taps``) under a key naming the host, CPU, torch version, thread count, device and
setting; a probe taken while runs were training, or while other processes kept it from the
cores, is taken again once no run trains.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from taps.fileio import atomic_write

__all__ = ["ProbeSetting", "StepTiming", "cache_path", "machine_key", "measure_step", "step_timing"]

PROBE_STEPS = 3  # timed steps after the warm-up step
PROBE_BUDGET_S = 2.0  # stop timing steps once this much time went into them (large settings: fewer)
CACHE_NAME = "step_times.json"
MAX_AGE_S = 7 * 24 * 3600  # re-measure weekly: drivers, kernels and libraries change under a cache


@dataclass(frozen=True)
class ProbeSetting:
    """What a training step's time depends on (data, λ and epochs do not change it)."""
    backbone: str
    resolution: int
    batch_size: int
    method: str = "taps"
    device: str = "auto"


@dataclass
class StepTiming:
    step_s: float  # one training step (forward, backward, optimizer) at the setting's batch size
    eval_image_s: float  # one image through the model in evaluation mode
    steps_timed: int
    measured_at: float
    busy: bool  # runs (or other processes) had the CPU while it was measured: slower than an idle machine


def cache_path() -> Path:
    return Path(os.environ.get("TAPS_CACHE_DIR") or "~/.cache/taps").expanduser() / CACHE_NAME


def cpu_name() -> str:
    """The CPU's model name (machines of one name differ several-fold in speed: part of the key)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(setting: ProbeSetting) -> str:
    """One cache entry per machine and setting: a folder shared between machines keeps each apart."""
    import torch

    return "|".join(str(part) for part in (
        socket.gethostname(), cpu_name(), torch.__version__, torch.get_num_threads(), setting.device,
        setting.backbone, setting.method, setting.resolution, setting.batch_size))


def measure_step(setting: ProbeSetting) -> tuple[float, float, int, bool]:
    """(seconds per training step, seconds per evaluated image, steps timed, whether other
    processes crowded the CPU meanwhile), measured now on a step built as
    :func:`taps.training.trainer.train` builds it: the method's model, its optimizer and penalty,
    channels-last and mixed precision where the trainer uses them."""
    import torch
    import torch.nn.functional as F

    from taps import SparsityPenalty
    from taps.backbones import resolve_device
    from taps.training.trainer import (TrainConfig, build_model, build_optimizer, eval_loader, mixed_precision_dtype,
                              uses_channels_last)

    config = TrainConfig.from_flat(backbone=setting.backbone, method=setting.method, weights="none",
                         resolution=setting.resolution, batch_size=setting.batch_size, device=setting.device)
    device = resolve_device(config.device)
    classes = 10
    state = torch.random.get_rng_state()  # the probe must not move the caller's random stream
    try:
        model = build_model(config, classes).to(device).train()
        optimizer = build_optimizer(model, config)
        penalty = SparsityPenalty(model) if setting.method == "taps" else None
        amp_dtype = mixed_precision_dtype(device, config.optim.amp)
        memory_format = torch.channels_last if uses_channels_last(device, amp_dtype) else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        images = torch.rand(setting.batch_size, 3, setting.resolution, setting.resolution, device=device)
        images = images.contiguous(memory_format=memory_format)
        labels = torch.randint(0, classes, (setting.batch_size,), device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(images).float(), labels)
            if penalty is not None:
                loss = loss + penalty(config.sparsity.lam)
            loss.backward()
            optimizer.step()
            sync()

        step()  # warm-up: allocator and kernel choice, not what later steps cost
        times: list[float] = []
        cpu_started = time.process_time()
        while len(times) < PROBE_STEPS and sum(times) < PROBE_BUDGET_S:
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        # Other processes had the cores when the probe got less than half the CPU time its threads could use.
        crowded = device.type == "cpu" and (time.process_time() - cpu_started) < 0.5 * torch.get_num_threads() * sum(times)
        eval_batch = eval_loader([], config, pin=False).batch_size  # the trainer's evaluation batch
        batch = torch.rand(eval_batch, 3, setting.resolution, setting.resolution, device=device)
        batch = batch.contiguous(memory_format=memory_format)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            started = time.perf_counter()
            model(batch)
            sync()
            eval_s = time.perf_counter() - started
        return statistics.median(times), eval_s / eval_batch, len(times), crowded
    finally:
        torch.random.set_rng_state(state)


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again


def step_timing(setting: ProbeSetting, *, busy: bool = False, path: Path | None = None,
                now: float | None = None) -> StepTiming:
    """This machine's step time for ``setting``: from the cache when it holds a fresh entry (one
    measured on a busy machine is taken again once no run trains: ``busy`` says whether some do
    now), else measured now and cached."""
    path = path or cache_path()
    now = time.time() if now is None else now
    key = machine_key(setting)
    cached = _read_cache(path).get(key)
    if cached:
        try:
            timing = StepTiming(**cached)
        except TypeError:
            timing = None  # written by another version: measure again
        if timing and now - timing.measured_at < MAX_AGE_S and (busy or not timing.busy):
            return timing
    step_s, eval_image_s, steps, crowded = measure_step(setting)
    timing = StepTiming(step_s, eval_image_s, steps, now, busy or crowded)
    entries = _read_cache(path)  # again: another process may have written meanwhile
    entries[key] = asdict(timing)
    payload = (json.dumps(entries, indent=1, sort_keys=True) + "\n").encode("utf-8")
    try:
        atomic_write(path, lambda fh: fh.write(payload), concurrent_writers=True)
    except OSError:
        pass  # a read-only cache folder: measure again next time
    return timing
