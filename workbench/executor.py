"""One run's body, the same wherever it runs: a local worker process or a Ray task.

    code = execute(store, run_id, RunFiles(store.run_dir(run_id)), should_stop)

It loads the run's config from the store, marks the run running (pid, process create time, host,
device), trains with the taps trainer while a :class:`~workbench.store.StoreRecorder` writes the
events, and ends the run:

- done: final metrics, plus every file the run wrote as an artifact: the task pack (a joint run's
  task packs and their base, a λ path's stage packs too), the checkpoint and the log;
- cancelled: ``should_stop()`` said so; the run stops after the current step and keeps its last
  checkpoint, so it can be resumed;
- failed: the trainer's own message (e.g. "loss became nan …") as the run's error; the full
  traceback goes to the log.

A run whose checkpoint is in its folder resumes from it. Only two things differ between a local
worker and a Ray task, and both are handed in: the store (a RunStore, or a stand-in forwarding its
methods) and where the trainer's files go (:class:`RunFiles`). A local worker writes straight into
the store's run folder; a Ray task, which may not see that disk, writes into a node-local folder
and ships every file to the run folder as soon as it is written, so a run stopped on one node
resumes on another from its last epoch (``workbench.ray_backend``).

``TAPS_WORKER_STEP_DELAY`` (seconds, default 0) slows every step down: a demo and test aid to
watch live updates, cancel or kill a run mid-training.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from taps.training.checkpoint import CHECKPOINT

from .launcher import CANCEL_FLAG, LOG_NAME
from .processes import create_time, process_alive
from .store import StoreError, StoreRecorder

__all__ = ["RunFiles", "STEP_DELAY_ENV", "cancel_requested", "error_message", "execute", "step_delay"]

STEP_DELAY_ENV = "TAPS_WORKER_STEP_DELAY"


def step_delay() -> float:
    """This process's ``TAPS_WORKER_STEP_DELAY``, in seconds."""
    return float(os.environ.get(STEP_DELAY_ENV) or 0)


def cancel_requested(run_folder: Path) -> bool:
    """Whether a launcher asked the run in ``run_folder`` to stop (its CANCEL flag)."""
    return (Path(run_folder) / CANCEL_FLAG).exists()


def error_message(exc: BaseException) -> str:
    """A failed run's error as stored: a TAPSError's own message, else the exception's type too."""
    from taps.errors import TAPSError

    if isinstance(exc, TAPSError) and str(exc):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunFiles:
    """Where a run's files go. This one: the trainer writes straight into the store's run folder
    (``work_dir``), so there is nothing to ship. A subclass that writes elsewhere overrides
    :meth:`fetch_checkpoint`, :meth:`ship` and :meth:`log`; as a trainer callback it ships each
    stage pack and checkpoint the moment the trainer has written it."""

    def __init__(self, work_dir: str | os.PathLike):
        self.work_dir = Path(work_dir)

    def fetch_checkpoint(self) -> bool:
        """Bring the run's last checkpoint into ``work_dir`` if the store has one; whether it is there."""
        return (self.work_dir / CHECKPOINT).exists()

    def ship(self, path: str | os.PathLike) -> str:
        """The path in the store's run folder of ``path``, a file the trainer wrote."""
        return str(path)

    def log(self) -> str:
        """The path of the run's log in the store's run folder, holding what was printed so far."""
        return str(self.work_dir / LOG_NAME)

    def on_epoch(self, event) -> None:
        if event.snapshot:  # a λ path's stage pack
            self.ship(event.snapshot)

    def on_checkpoint(self, path: Path) -> None:
        self.ship(path)


class SlowMotion:
    """A trainer callback that sleeps after every step (``TAPS_WORKER_STEP_DELAY``)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step(self, event) -> None:
        time.sleep(self.seconds)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def execute(store, run_id: str, files: RunFiles, should_stop: Callable[[], bool], *, step_delay: float = 0.0) -> int:
    """Train run ``run_id`` of ``store``, its files going through ``files``, polling ``should_stop``
    every step. Returns an exit code: 0 done, cancelled or nothing to do; 1 failed; 2 no such run."""
    run_row = store.get_run(run_id)
    if run_row is None:
        say(f"error: no run {run_id!r} in the run store {store.root}")
        return 2
    me = os.getpid()
    status = run_row["status"]
    if status == "running" and run_row.get("pid") not in (None, me):
        if process_alive(run_row.get("pid"), run_row.get("pid_create_time")):
            say(f"worker: run {run_id} is already run by process {run_row['pid']}")
            return 0
    elif status not in ("queued", "running"):
        say(f"worker: run {run_id} is {status}; nothing to do")
        return 0

    files.work_dir.mkdir(parents=True, exist_ok=True)
    recorder = None
    try:
        from taps.backbones import device_description, resolve_device
        from taps.training.trainer import TrainConfig, train

        config = TrainConfig.from_dict(dict(run_row["config"]))
        config.out_dir = str(files.work_dir)
        device = device_description(resolve_device(config.device))
        store.mark_running(run_id, me, create_time(me), socket.gethostname(), device)
        say(f"worker {me}: run {run_id} on {device}")
        if should_stop():
            store.finish(run_id, "cancelled")
            say(f"worker: run {run_id} cancelled before it started")
            return 0
        recorder = StoreRecorder(store, run_id, flush_every_s=0.5, flush_each_epoch=True)
        callbacks = [recorder, files]  # the recorder first: a file is shipped after its epoch is recorded
        if step_delay > 0:
            callbacks.append(SlowMotion(step_delay))
        resume = files.fetch_checkpoint()
        if resume:
            say(f"worker: resuming from {files.work_dir / CHECKPOINT}")
        result = train(config, callbacks, resume=resume, should_stop=should_stop)  # refuses unsafe checkpoints
        recorder.close()
        # A λ path names its stage packs (in its path and in its frontier points): name the stored ones.
        for point, key in [(p, "snapshot") for p in result.metrics.get("path") or []] + \
                [(p, "pack") for p in result.metrics.get("points") or []]:
            if point.get(key):
                point[key] = files.ship(point[key])
        for pack in ([result.pack_path] if result.pack_path else []) + list(result.task_packs.values()) + \
                list(result.stage_packs):
            store.add_artifact(run_id, "pack", files.ship(pack))
        if result.base_path:  # a joint run's trained shared base, which its packs need
            store.add_artifact(run_id, "base", files.ship(result.base_path))
        if (files.work_dir / CHECKPOINT).exists():
            store.add_artifact(run_id, "checkpoint", files.ship(files.work_dir / CHECKPOINT))
        store.add_artifact(run_id, "log", files.log())
        final = "cancelled" if result.status == "cancelled" else "done"
        store.finish(run_id, final, metrics=result.metrics)
        say(f"worker: run {run_id} {final} after {result.epochs_done} epochs")
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must end the run in the store
        traceback.print_exc()
        sys.stderr.flush()
        if recorder is not None:
            try:
                recorder.close()  # keep every step that was reached
            except Exception:
                traceback.print_exc()
        try:
            current = store.get_run(run_id)
            if current is not None and current["status"] in ("queued", "running"):
                if isinstance(exc, KeyboardInterrupt) and should_stop():
                    store.finish(run_id, "cancelled")
                else:
                    store.finish(run_id, "failed", error=error_message(exc))
        except StoreError:
            traceback.print_exc()
        return 1
