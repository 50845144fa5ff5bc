"""One run, in its own process: ``python -m workbench.worker --store ROOT --run RUN_ID``.

Started by :class:`workbench.launcher.Launcher` (stdout and stderr go to ``<run>/log.txt``). It
runs the run's body (:func:`workbench.executor.execute`: config, events, artifacts, its end as
done, cancelled or failed) with the trainer writing straight into the run's folder, so a run
folder holding ``checkpoint.pt`` resumes from it. A ``<run>/CANCEL`` file or SIGTERM stops it
after the current step, keeping the last checkpoint. When the run ends, the worker starts the
next queued runs (a fresh Launcher on the same store), so the queue advances with no app open.

``TAPS_WORKER_STEP_DELAY`` (seconds, default 0) slows every step down: a demo and test aid to
watch live updates, cancel or kill a run mid-training.
"""
from __future__ import annotations

import argparse
import signal
import sys
import traceback

from .executor import RunFiles, cancel_requested, execute, step_delay
from .store import RunStore, StoreError

_stop_requested = False


def _on_sigterm(signum, frame) -> None:
    global _stop_requested
    _stop_requested = True
    print(f"worker: signal {signum} received, stopping after this step", file=sys.stderr, flush=True)


def run(store: RunStore, run_id: str) -> int:
    """Train run ``run_id`` of ``store`` in this process; returns the exit code."""
    try:
        folder = store.run_dir(run_id)
    except StoreError as exc:  # not a run id at all
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return execute(store, run_id, RunFiles(folder), lambda: _stop_requested or cancel_requested(folder),
                   step_delay=step_delay())


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
