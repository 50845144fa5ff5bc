"""StoreRecorder: the trainer callback that writes a run's events into a RunStore, in batches."""
from __future__ import annotations

import time

from .encoding import event_dict
from .run_store import RunStore


class StoreRecorder:
    """A taps.training.trainer callback that records a run's events into a RunStore.

    Steps are buffered and written in one transaction per batch: every ``flush_every_steps``
    steps or ``flush_every_s`` seconds, whichever comes first, before each epoch record and on
    :meth:`close`. Each flush is also the run's heartbeat. If a write fails (disk full…), the
    StoreError propagates (stopping the trainer) and the unwritten steps stay buffered.

    With ``flush_each_epoch`` it also flushes at the last step of every epoch, before the trainer
    writes that epoch's checkpoint: a checkpoint then never gets ahead of the recorded steps, and
    a run killed, or failing to record, at any moment resumes from an epoch whose steps are all
    in the store, so no step goes missing. Workers, which resume from checkpoints, ask for it.
    """

    def __init__(self, store: RunStore, run_id: str, flush_every_s: float = 1.0, flush_every_steps: int = 50,
                 flush_each_epoch: bool = False):
        self.store, self.run_id = store, run_id
        self.flush_each_epoch = flush_each_epoch
        self.flush_every_s = float(flush_every_s)
        self.flush_every_steps = max(1, int(flush_every_steps))
        self.flushes = 0
        self.steps_recorded = 0
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        self._steps_per_epoch = 0  # known from the start event

    def on_start(self, event) -> None:
        d = event_dict(event)
        self.store.record_start(self.run_id, d)
        if self.flush_each_epoch:
            self._steps_per_epoch = int(d.get("steps_per_epoch") or 0)
        self._last_flush = time.monotonic()

    def on_step(self, event) -> None:
        d = event_dict(event)
        if d.get("scores") is not None:
            d["scores"] = list(d["scores"])  # the trainer's list is its own
        d.setdefault("t", time.time())
        self._buffer.append(d)
        epoch_ends = self._steps_per_epoch and int(d["step"]) % self._steps_per_epoch == 0
        if (epoch_ends or len(self._buffer) >= self.flush_every_steps
                or time.monotonic() - self._last_flush >= self.flush_every_s):
            self.flush()

    def on_epoch(self, event) -> None:
        self.flush()
        self.store.record_epoch(self.run_id, event_dict(event))

    def flush(self) -> None:
        if not self._buffer:
            return
        self.store.record_steps(self.run_id, self._buffer)  # raises: the buffer is kept
        self.steps_recorded += len(self._buffer)
        self._buffer = []
        self.flushes += 1
        self._last_flush = time.monotonic()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "StoreRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
