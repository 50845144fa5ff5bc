"""Bytes held by CPU tensors, allocation by allocation: the CPU's counterpart of
``torch.cuda.max_memory_allocated``.

A process's resident set (what the OS sees) also holds memory the allocator has freed but kept,
and glibc's choice of what to keep depends on the order of earlier frees: the same step's peak
moved by up to 9 % between two runs. PyTorch's profiler, asked for memory, records every CPU tensor
allocation and free with its size, so the bytes live at any moment are the running sum of those
records since the trace began: exact and repeatable. Buffers a library allocates past PyTorch's
allocator (oneDNN's scratch space) are not seen.
"""
from __future__ import annotations

import itertools

from torch.profiler import ProfilerActivity, profile, record_function

_WINDOW = "allocated_memory.window"


class AllocationTrace:
    """Within ``with AllocationTrace() as trace:``, every CPU allocation and free; create what
    is to be measured inside it, so that the running sum counts it from its first byte. Then
    ``trace.peak_bytes()`` is the most held at once inside ``trace.window()`` blocks (or over
    the whole trace if there were none) and ``trace.live_bytes()`` what is held at the end."""

    def __enter__(self) -> "AllocationTrace":
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        self._running: list[tuple[int, int]] | None = None
        self._windows: list[tuple[int, int]] = []
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        events = self._profile.profiler.kineto_results.events()
        changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        # (time, bytes held just after it) for every allocation and free
        self._running = list(zip((t for t, _ in changes), itertools.accumulate(n for _, n in changes)))
        self._windows = [(e.start_ns(), e.end_ns()) for e in events if e.name() == _WINDOW]

    @staticmethod
    def window():
        """Mark the part of the trace whose peak is wanted (e.g. steps after the first)."""
        return record_function(_WINDOW)

    def _finished(self) -> list[tuple[int, int]]:
        if self._running is None:
            raise RuntimeError("the trace is read after its `with` block ends")
        return self._running

    def peak_bytes(self) -> int:
        windows = self._windows
        inside = [b for t, b in self._finished() if not windows or any(s <= t <= e for s, e in windows)]
        return max(inside, default=0)

    def live_bytes(self) -> int:
        running = self._finished()
        return running[-1][1] if running else 0
