"""Small shared fixtures for tests: models in a known non-trivial TAPS state, an event recorder,
a fast run configuration, polling, and write faults (a kill or a full disk half-way through a write)."""
import errno
import os
import signal
import time

import torch
import torchvision

import taps
from tests.speed import patience


def tiny_resnet(num_classes: int = 5) -> torch.nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.taps_backbone = "tv_resnet18"
    return model


@torch.no_grad()
def scramble(model: torch.nn.Module, off_every: int = 2, seed: int = 0) -> None:
    """Give an adapted model random deltas, BN statistics and head, and switch every
    ``off_every``-th layer off — the state a trained model is in."""
    g = torch.Generator().manual_seed(seed)
    for i, (_, layer) in enumerate(taps.gated_layers(model)):
        layer.delta.copy_(torch.randn(layer.delta.shape, generator=g) * 0.01)
        layer.score.fill_(0.05 if i % off_every == 0 else 0.3)
    for _, norm in taps.norm_layers(model):
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=g) * 0.1)
            norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=g) + 0.5)
        if norm.weight is not None:
            norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=g))
    head = model.get_submodule(taps.find_head(model))
    head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.1)


class Recorder:
    """A trainer callback keeping every event it is given."""

    def __init__(self):
        self.start, self.steps, self.epochs = None, [], []

    def on_start(self, e):
        self.start = e

    def on_step(self, e):
        self.steps.append(e)

    def on_epoch(self, e):
        self.epochs.append(e)


# A whole worker run in a few seconds on 2 CPU cores: a 0.4 M-parameter timm model without
# pretrained weights, scikit-learn's digits at 32 px; 4 steps an epoch.
FAST_RUN = dict(backbone="test_resnet", weights="none", dataset="digits", resolution=32, train_subset=64,
                eval_subset=50, batch_size=16, epochs=2)


def poll_until(predicate, timeout: float, poll: float = 0.05):
    """``predicate()``'s first truthy value, polling; AssertionError after ``timeout`` seconds
    on the reference machine (longer on a slower one)."""
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout:.0f} s")


def step_numbers(store, run_id: str) -> list[int]:
    return [s["step"] for s in store.steps_since(run_id, 0)]


class _FaultyFile:
    """A binary file that calls ``fault()`` once ``after_bytes`` bytes are in it."""

    def __init__(self, fh, fault, after_bytes: int):
        self._fh, self._fault, self._room = fh, fault, after_bytes

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._room:
            self._fh.write(data[:self._room])
            self._fh.flush()
            self._room = 0
            self._fault()  # raises (a full disk) or never returns (kill -9)
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def faulty_open(filename: str, fault, *, nth: int = 1, after_bytes: int = 100):
    """An ``open`` for ``taps.fileio`` (set it as ``taps.fileio.open``) under which the ``nth``
    atomic write of a file named ``filename`` calls ``fault()`` after ``after_bytes`` bytes:
    a worker killed, or a disk filling up, half-way through writing a checkpoint or a pack."""
    import builtins

    calls = 0

    def open_(file, mode="r", *args, **kwargs):
        nonlocal calls
        fh = builtins.open(file, mode, *args, **kwargs)
        if os.path.basename(file) != filename + ".tmp":
            return fh
        calls += 1
        return _FaultyFile(fh, fault, after_bytes) if calls == nth else fh

    return open_


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")
