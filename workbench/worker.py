"""One run, in its own process: ``python -m workbench.worker --store ROOT --run RUN_ID``.

Started by :class:`workbench.launcher.Launcher` (stdout and stderr go to ``<run>/log.txt``). It
loads the run's config from the store, marks the run running (pid, process create time, host,
device), trains with the taps trainer while a :class:`~workbench.store.StoreRecorder` writes
the events, and ends the run:

- done: final metrics, plus the task pack and checkpoint as artifacts;
- cancelled: a ``<run>/CANCEL`` file or SIGTERM stops it after the current step; the last
  checkpoint is kept, so the run can be resumed;
- failed: the trainer's own message (e.g. "loss became nan …") as the run's error; the full
  traceback goes to the log.

A run folder holding ``checkpoint.pt`` resumes from it. When the run ends, the worker starts the
next queued runs (a fresh Launcher on the same store), so the queue advances with no app open.

``TAPS_WORKER_STEP_DELAY`` (seconds, default 0) slows every step down: a demo and test aid to
watch live updates, cancel or kill a run mid-training.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import traceback

from .processes import create_time, process_alive
from .store import RunStore, StoreRecorder, StoreError

CANCEL_FLAG = "CANCEL"
STEP_DELAY_ENV = "TAPS_WORKER_STEP_DELAY"

_stop_requested = False


def _on_sigterm(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True
    print(f"worker: signal {signum} received, stopping after this step", file=sys.stderr, flush=True)


class _SlowMotion:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step(self, event) -> None:
        time.sleep(self.seconds)


def error_message(exc: BaseException) -> str:
    """A failed run's error as stored: a TAPSError's own message, else the exception's type too."""
    from taps.errors import TAPSError

    if isinstance(exc, TAPSError) and str(exc):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(store: RunStore, run_id: str) -> int:
    """Train run ``run_id`` of ``store`` in this process; returns the exit code."""
    run_row = store.get_run(run_id)
    if run_row is None:
        print(f"error: no run {run_id!r} in the run store {store.root}", file=sys.stderr)
        return 2
    me = os.getpid()
    status = run_row["status"]
    if status == "running" and run_row.get("pid") not in (None, me):
        if process_alive(run_row.get("pid"), run_row.get("pid_create_time")):
            print(f"worker: run {run_id} is already run by process {run_row['pid']}", file=sys.stderr)
            return 0
    elif status not in ("queued", "running"):
        print(f"worker: run {run_id} is {status}; nothing to do", file=sys.stderr)
        return 0

    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    cancel_path = folder / CANCEL_FLAG

    def should_stop() -> bool:
        return _stop_requested or cancel_path.exists()

    recorder = None
    try:
        from taps.backbones import device_description, resolve_device
        from taps.training.trainer import CHECKPOINT, TrainConfig, train

        config = TrainConfig.from_dict(dict(run_row["config"]))
        config.out_dir = str(folder)
        device = device_description(resolve_device(config.device))
        store.mark_running(run_id, me, create_time(me), socket.gethostname(), device)
        print(f"worker {me}: run {run_id} on {device}", file=sys.stderr, flush=True)
        if should_stop():
            store.finish(run_id, "cancelled")
            print(f"worker: run {run_id} cancelled before it started", file=sys.stderr, flush=True)
            return 0
        recorder = StoreRecorder(store, run_id, flush_every_s=0.5, flush_each_epoch=True)
        callbacks = [recorder]
        delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
        if delay > 0:
            callbacks.append(_SlowMotion(delay))
        resume = (folder / CHECKPOINT).exists()
        if resume:
            print(f"worker: resuming from {folder / CHECKPOINT}", file=sys.stderr, flush=True)
        result = train(config, callbacks, resume=resume, should_stop=should_stop)  # refuses unsafe checkpoints
        recorder.close()
        for pack in ([result.pack_path] if result.pack_path else []) + list(result.task_packs.values()) + \
                list(result.stage_packs):
            store.add_artifact(run_id, "pack", pack)
        if result.base_path:  # a joint run's trained shared base, which its packs need
            store.add_artifact(run_id, "base", result.base_path)
        if (folder / CHECKPOINT).exists():
            store.add_artifact(run_id, "checkpoint", folder / CHECKPOINT)
        store.add_artifact(run_id, "log", folder / "log.txt")
        final = "cancelled" if result.status == "cancelled" else "done"
        store.finish(run_id, final, metrics=result.metrics)
        print(f"worker: run {run_id} {final} after {result.epochs_done} epochs", file=sys.stderr, flush=True)
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


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m workbench.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="the runs folder (RunStore root)")
    parser.add_argument("--run", required=True, help="the run id")
    args = parser.parse_args(argv)
    try:
        store = RunStore(args.store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        code = run(store, args.run)
    finally:
        try:  # the queue advances without any app: start what is waiting
            from .launcher import Launcher

            Launcher(store).schedule()
        except Exception:
            traceback.print_exc()
    return code


if __name__ == "__main__":
    sys.exit(main())
