"""The launcher: runs as local background processes, queued in the run store.

    launcher = Launcher(RunStore())                      # concurrency: visible GPUs, else 1
    run_id = launcher.launch({"lam": 0.5}, name="λ=0.5")       # or a TrainConfig
    sweep_id, run_ids = launcher.sweep(base, lams=[0.1, 1, 10], baselines=True)
    launcher.cancel(run_id); launcher.resume(run_id)

Each run is one ``python -m workbench.worker`` process in its own session (it survives the app
and the launcher), writing its events into the store and its output into ``<run>/log.txt``.
The queue lives in the store, not in this object: when a worker ends it starts the next queued
runs itself (a fresh :class:`Launcher` on the same store), so queued runs proceed with no app
open. Claiming queued runs happens under an exclusive file lock (``<root>/launcher.lock``), so
two launchers never start the same run nor exceed the concurrency limit.

Liveness: a run marked running whose process is gone (or whose pid now belongs to another
process: the create time differs) becomes failed with "worker process disappeared"; what it
recorded before stays, and :meth:`Launcher.resume` continues it from its last checkpoint.

torch is not imported when this module is imported (validation at launch imports the trainer).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from taps.fileio import atomic_write
from taps.training.train_config import TrainConfig

from .hardware import THREADS_ENV, cpu_threads_per_worker, visible_gpus
from .processes import create_time, process_alive
from .store import STATUSES, TERMINAL, RunStore, StoreError

__all__ = ["Launcher", "LOCK_NAME", "CANCEL_FLAG", "DISAPPEARED", "STATUSES", "TERMINAL"]  # statuses: for readers

LOCK_NAME = "launcher.lock"
SETTINGS_NAME = "launcher.json"
CANCEL_FLAG = "CANCEL"
GPU_FILE = "gpu"
LOG_NAME = "log.txt"
DISAPPEARED = "worker process disappeared"
BASELINES = ("finetune", "feature_extractor")


class Launcher:
    """Starts, queues, cancels and resumes runs of one :class:`RunStore` as local processes."""

    backend = "local"  # the runs this launcher starts; others (e.g. Ray's) are left alone

    def __init__(self, store: RunStore | str | os.PathLike | None = None, max_concurrent: int | None = None):
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.root = self.store.root
        self._procs: dict[str, subprocess.Popen] = {}
        settings = self.root / SETTINGS_NAME
        if max_concurrent is not None:
            if int(max_concurrent) < 1:
                raise ValueError(f"max_concurrent must be ≥ 1, got {max_concurrent!r}")
            self.max_concurrent = int(max_concurrent)
            # Workers start the next queued runs with a fresh Launcher: let them use the same limit.
            payload = (json.dumps({"max_concurrent": self.max_concurrent}) + "\n").encode("utf-8")
            atomic_write(settings, lambda fh: fh.write(payload), concurrent_writers=True)
        else:
            saved = None
            try:
                saved = int(json.loads(settings.read_text(encoding="utf-8"))["max_concurrent"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            self.max_concurrent = saved if saved and saved >= 1 else max(1, len(visible_gpus()))

    def __repr__(self) -> str:
        return f"Launcher({str(self.root)!r}, max_concurrent={self.max_concurrent})"

    # ----------------------------------------------------------------- locking
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive across processes: reaping and claiming queued runs happen under it."""
        with open(self.root / LOCK_NAME, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ----------------------------------------------------------------- validation
    @staticmethod
    def validate(config: "TrainConfig | dict") -> "TrainConfig":
        """The trainer's own checks, plus: the backbone is known and the dataset is known and on
        this machine (or may be downloaded). ``config``: a TrainConfig, its JSON form or flat
        settings. Raises the taps error that says what is wrong."""
        from taps.training.preflight import preflight  # imports torch: only when someone launches

        return preflight(as_config(config))

    # ----------------------------------------------------------------- launching
    def launch(self, config: "TrainConfig | dict", *, name: str | None = None, sweep: str | None = None) -> str:
        """Validate ``config`` (nothing is queued if it is bad), queue a run, start what fits."""
        cfg = self.validate(config)
        run_id = self._create(cfg, name, sweep)
        self.schedule()
        return run_id

    def sweep(self, base_config: "TrainConfig | dict", lams: Iterable[float], lrs: Iterable[float] | None = None,
              datasets: Iterable[str] | None = None, baselines: bool = False,
              name: str | None = None) -> tuple[str, list[str]]:
        """A grid of TAPS runs λ × lr × dataset (plus, with ``baselines``, 'finetune' and
        'feature_extractor' per dataset and lr), all in one sweep. Every config is validated
        before any run is queued. Returns (sweep_id, run_ids)."""
        base = as_config(base_config)
        lams = list(lams)
        if not lams:
            raise ValueError("a sweep needs at least one λ")
        lrs = list(lrs) if lrs else [base.optim.lr]
        datasets = list(datasets) if datasets else [base.data.dataset]
        plan: list[tuple[TrainConfig, str]] = []
        for ds in datasets:
            for lr in lrs:
                for lam in lams:
                    cfg = base.updated(dataset=ds, lr=lr, lam=lam, method="taps")
                    plan.append((cfg, _run_name("taps", ds, lr, lam, datasets, lrs)))
                if baselines:
                    for method in BASELINES:
                        cfg = base.updated(dataset=ds, lr=lr, method=method)
                        plan.append((cfg, _run_name(method, ds, lr, None, datasets, lrs)))
        checked = [(self.validate(cfg), run_name) for cfg, run_name in plan]
        sweep_id = name or f"sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(2).hex()}"
        run_ids = [self._create(cfg, run_name, sweep_id) for cfg, run_name in checked]
        self.schedule()
        return sweep_id, run_ids

    def _create(self, cfg, name: str | None, sweep: str | None) -> str:
        """Queue a validated TrainConfig, with what it says about itself before it trains."""
        return self.store.create_run(cfg.to_dict(), name=name, sweep=sweep, backend=self.backend,
                                     kind=cfg.run_kind, lam=cfg.planned_lam, epochs=cfg.planned_epochs)

    # ----------------------------------------------------------------- the queue
    def reap(self) -> list[str]:
        """Runs marked running whose worker is gone become failed ("worker process
        disappeared"). Returns their ids."""
        with self._lock():
            return self._reap_locked()

    def _poll_children(self) -> None:
        for run_id, proc in list(self._procs.items()):
            if proc.poll() is not None:  # collects the exit status: no zombie stays behind
                self._procs.pop(run_id, None)  # another thread may have collected it first

    def _reap_locked(self) -> list[str]:
        self._poll_children()
        host = socket.gethostname()
        reaped = []
        for run in self.store.list_runs(status="running"):
            if run.get("host") and run["host"] != host:
                continue  # another machine's process: not ours to judge
            if process_alive(run.get("pid"), run.get("pid_create_time")):
                continue
            try:
                self.store.finish(run["id"], "failed", error=DISAPPEARED)
                reaped.append(run["id"])
            except StoreError:
                pass  # it finished meanwhile
        return reaped

    def schedule(self) -> list[str]:
        """Reap dead workers, then start queued runs (oldest first) while fewer than
        ``max_concurrent`` run. Returns the ids started."""
        started = []
        with self._lock():
            self._reap_locked()
            running = self.store.list_runs(status="running")
            queued = sorted((r for r in self.store.list_runs(status="queued")
                             if (r.get("backend") or "local") == "local"), key=lambda r: r["created_at"])
            gpus = visible_gpus()
            busy = {self._gpu_of(r["id"]) for r in running}
            slots = self.max_concurrent - len(running)
            for run in queued:
                if slots <= 0:
                    break
                gpu = next((g for g in gpus if g not in busy), None) if gpus else None
                if gpus and gpu is None:
                    break
                self._start(run["id"], gpu)
                started.append(run["id"])
                if gpu is not None:
                    busy.add(gpu)
                slots -= 1
        return started

    def _gpu_of(self, run_id: str) -> str | None:
        try:
            return (self.store.run_dir(run_id) / GPU_FILE).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def _start(self, run_id: str, gpu: str | None) -> None:
        """Start the worker of a queued run and claim it (running, with its pid) at once, so no
        other launcher starts it too. Called under the lock."""
        folder = self.store.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (folder / CANCEL_FLAG).unlink()
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
            (folder / GPU_FILE).write_text(gpu + "\n", encoding="utf-8")
        else:
            with contextlib.suppress(FileNotFoundError):
                (folder / GPU_FILE).unlink()
            if THREADS_ENV not in os.environ:  # the user's own setting wins
                env[THREADS_ENV] = str(cpu_threads_per_worker(self.max_concurrent))
        # The worker must find the workbench and taps packages wherever it is started from.
        project = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(folder / LOG_NAME, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting worker"
                      f"{' on GPU ' + gpu if gpu is not None else ''}\n".encode())
            log.flush()
            proc = subprocess.Popen([sys.executable, "-m", "workbench.worker", "--store", str(self.root),
                                     "--run", run_id], start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        self._procs[run_id] = proc
        try:
            self.store.mark_running(run_id, proc.pid, create_time(proc.pid), socket.gethostname())
        except BaseException:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise

    # ----------------------------------------------------------------- control
    def cancel(self, run_id: str, grace_s: float = 10.0) -> str:
        """Cancel a run. Queued: cancelled now. Running: a CANCEL flag and SIGTERM ask the worker
        to stop after its current step (it keeps its last checkpoint and records 'cancelled');
        after ``grace_s`` the process group is killed and the run marked cancelled. Returns the
        run's status afterwards."""
        with self._lock():
            run = self._require(run_id)
            if run["status"] == "queued":
                self.store.finish(run_id, "cancelled")
                return "cancelled"
            if run["status"] != "running":
                return run["status"]
            folder = self.store.run_dir(run_id)
            (folder / CANCEL_FLAG).write_text("cancel\n", encoding="utf-8")
        pid = run.get("pid")
        alive = process_alive(pid, run.get("pid_create_time"))
        if alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, float(grace_s))
        while alive and time.monotonic() < deadline:  # the worker records 'cancelled' and exits
            self._poll_children()
            if not process_alive(pid, run.get("pid_create_time")):
                break
            time.sleep(0.1)
        if process_alive(pid, run.get("pid_create_time")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            for _ in range(50):
                self._poll_children()
                if not process_alive(pid, run.get("pid_create_time")):
                    break
                time.sleep(0.1)
        if self.store.get_run(run_id)["status"] == "running":
            with contextlib.suppress(StoreError):
                self.store.finish(run_id, "cancelled")
        status = self.store.get_run(run_id)["status"]
        self.schedule()
        return status

    def resume(self, run_id: str) -> str:
        """Queue a failed or cancelled run again; its worker continues from the last checkpoint.
        Returns its status after scheduling (queued or running)."""
        run = self._require(run_id)
        if run["status"] not in ("failed", "cancelled"):
            raise StoreError(f"run {run_id} is {run['status']}; only failed or cancelled runs can be resumed")
        with contextlib.suppress(FileNotFoundError):
            (self.store.run_dir(run_id) / CANCEL_FLAG).unlink()
        self.store.set_status(run_id, "queued")
        self.schedule()
        return self.store.get_run(run_id)["status"]

    def _require(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        if run is None:
            raise StoreError(f"no run {run_id!r} in the run store {self.root}")
        return run

    # ----------------------------------------------------------------- reading
    # What pages and notebooks read goes through here. The runs themselves are read after reaping
    # (a run whose worker vanished reads as failed, not running); what runs recorded is read as is.
    def list_runs(self, status=None, sweep: str | None = None, limit: int | None = None) -> list[dict]:
        self.reap()
        return self.store.list_runs(status=status, sweep=sweep, limit=limit)

    def get(self, run_id: str, *, reap: bool = True) -> dict | None:
        """The run; ``reap=False`` for a live view polling every second, which leaves reaping to
        a slower refresh (reaping at every poll was a tenth of a watched server's CPU)."""
        if reap:
            self.reap()
        return self.store.get_run(run_id)

    def events_since(self, run_id: str, after_step: int = 0, limit: int | None = None, *,
                     with_scores: bool = False) -> list[dict]:
        self.reap()
        return self.store.steps_since(run_id, after_step, limit, with_scores=with_scores)

    def frontier(self, sweep: str | None = None, run_ids: Iterable[str] | None = None) -> list[dict]:
        self.reap()
        return self.store.frontier(sweep, run_ids)

    def sweeps(self) -> list[str]:
        return self.store.sweeps()

    def steps_since(self, run_id: str, after_step: int = 0, limit: int | None = None, *,
                    with_scores: bool = False) -> list[dict]:
        """``events_since`` without reaping: for a live view that has just read the run."""
        return self.store.steps_since(run_id, after_step, limit, with_scores=with_scores)

    def scores_matrix(self, run_id: str, after_step: int = 0, every: int = 1, limit: int | None = None):
        return self.store.scores_matrix(run_id, after_step, every, limit)

    def epochs(self, run_id: str) -> list[dict]:
        return self.store.epochs(run_id)

    def artifacts(self, run_id: str, kind: str | None = None) -> list[dict]:
        return self.store.artifacts(run_id, kind)

    def log_path(self, run_id: str) -> Path:
        """The run's log: its worker's output."""
        return self.store.run_dir(run_id) / LOG_NAME

    def wait(self, run_ids: str | Iterable[str], timeout: float = 600.0, poll_s: float = 0.25) -> dict[str, str]:
        """Poll (scheduling and reaping as it goes) until every run is final; returns
        {run_id: status}. Raises TimeoutError with the statuses if ``timeout`` passes first."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        deadline = time.monotonic() + timeout
        while True:
            self.schedule()
            statuses = {i: self._require(i)["status"] for i in ids}
            if all(s in TERMINAL for s in statuses.values()):
                self._poll_children()
                return statuses
            if time.monotonic() >= deadline:
                raise TimeoutError(f"runs not finished after {timeout:g} s: {statuses}")
            time.sleep(poll_s)


def as_config(config: TrainConfig | dict) -> TrainConfig:
    """A TrainConfig from any of the forms a caller holds: itself, its JSON form, flat settings."""
    return config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))


def _run_name(method: str, dataset: str, lr: float, lam: float | None, datasets: list, lrs: list) -> str:
    parts = [method if lam is None else f"taps λ={lam:g}"]
    if len(lrs) > 1:
        parts.append(f"lr={lr:g}")
    if len(datasets) > 1:
        parts.append(str(dataset))
    return " ".join(parts)
