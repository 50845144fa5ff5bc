"""RunStore: the run store's one class, a database with its runs and their events."""
from __future__ import annotations

from .events import RunEvents
from .runs import RunLifecycle


class RunStore(RunLifecycle, RunEvents):
    """Runs, their step/epoch events, per-layer scores and artifacts, in ``root``.

    Safe to use from several threads (one SQLite connection per thread) and several processes
    (SQLite's own locking, WAL, busy timeout). Pickles as its root, so it can be handed to a
    ``spawn`` child process.
    """
