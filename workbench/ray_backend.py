"""Runs on a Ray cluster, recorded live in the same run store (``pip install .[cluster]``).

    launcher = RayLauncher(RunStore(), address="auto")     # or None: a local Ray instance
    sweep_id, run_ids = launcher.sweep(base_config, lams=[0.1, 1, 10], baselines=True)
    launcher.wait(run_ids)

Each run is one Ray task asking for one GPU when the cluster has GPUs (else CPUs), running the
same body as a local worker (:func:`workbench.executor.execute`). Workers may sit on machines
that cannot see the store's disk, so they never touch it: every write goes to a ``StoreWriter``
actor started beside the launching process, the store's only Ray-side writer. A task trains in a
node-local folder and ships each file to the run's folder in the store as soon as it is written
(every checkpoint, stage pack, task pack, base, and its log at the end), and a resumed run first
fetches its checkpoint from there: a run cancelled, or killed on one node, resumes on any node
from its last epoch. Cancelling writes the run's CANCEL flag, which the task reads through the
actor. The app and notebooks read the store as usual and see cluster runs exactly like local
ones. The actor lives as long as the launching process: keep it alive (``wait``) until the sweep
ends.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import ray

from taps.fileio import atomic_write

from taps.training.checkpoint import CHECKPOINT

from .executor import RunFiles, cancel_requested, execute, step_delay
from .launcher import CANCEL_FLAG, DISAPPEARED, LOG_NAME, Launcher
from .store import RunStore, StoreError

CANCEL_POLL_S = 0.5  # how often a task asks the actor whether its run was cancelled


class StoreWriter:
    """Actor: the run store, for workers anywhere in the cluster."""

    def __init__(self, root: str):
        self.store = RunStore(root)

    def root(self) -> str:
        return str(self.store.root)

    def call(self, method: str, *args, **kwargs):
        return getattr(self.store, method)(*args, **kwargs)

    def _path(self, run_id: str, name: str) -> Path:
        if not name or name in (".", "..") or Path(name).name != name:
            raise ValueError(f"not a file name in a run folder: {name!r}")
        return self.store.run_dir(run_id) / name

    def put_file(self, run_id: str, name: str, data: bytes) -> str:
        """Write a worker's file into the run's folder, atomically; returns its path there."""
        return str(atomic_write(self._path(run_id, name), lambda fh: fh.write(data)))

    def append_file(self, run_id: str, name: str, data: bytes) -> str:
        path = self._path(run_id, name)
        with open(path, "ab") as fh:
            fh.write(data)
        return str(path)

    def get_file(self, run_id: str, name: str) -> bytes | None:
        """The file's bytes, None if the run's folder has no such file."""
        path = self._path(run_id, name)
        return path.read_bytes() if path.exists() else None

    def stored(self, run_id: str, name: str) -> str:
        """The path of a file already in the run's folder (FileNotFoundError if it is not)."""
        path = self._path(run_id, name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not in the run store")
        return str(path)

    def cancel_requested(self, run_id: str) -> bool:
        return cancel_requested(self.store.run_dir(run_id))


class _RemoteStore:
    """The store methods a worker uses (those of StoreRecorder too), forwarded to the actor."""

    def __init__(self, writer):
        self._writer = writer
        self.root = ray.get(writer.root.remote())

    def __getattr__(self, method: str):
        return lambda *args, **kwargs: ray.get(self._writer.call.remote(method, *args, **kwargs))


class _Tee:
    """A text stream writing to two: what a task prints goes to Ray's log and to the run's."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno…: the stream it stands in for
        return getattr(self.streams[0], name)


class ShippedFiles(RunFiles):
    """A Ray task's files: written into a node-local folder, each shipped through the
    StoreWriter to the run's folder in the store (a checkpoint or stage pack as soon as the
    trainer has written it). As a context manager it copies what the task prints into the run's
    log, appended to the store's at the end."""

    def __init__(self, writer, run_id: str, work_dir: str | os.PathLike):
        super().__init__(work_dir)
        self.writer, self.run_id = writer, run_id
        self._sent: dict[str, tuple[tuple[int, int], str]] = {}  # name: (mtime, size) shipped, stored path
        self._log_sent = 0
        self._printing = contextlib.ExitStack()

    def _stamp(self, path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_mtime_ns, st.st_size

    def fetch_checkpoint(self) -> bool:
        data = ray.get(self.writer.get_file.remote(self.run_id, CHECKPOINT))
        if data is None:
            return False
        path = atomic_write(self.work_dir / CHECKPOINT, lambda fh: fh.write(data))
        stored = ray.get(self.writer.stored.remote(self.run_id, CHECKPOINT))
        self._sent[CHECKPOINT] = (self._stamp(path), stored)  # the store has it: no need to send it back
        return True

    def ship(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if not path.exists():  # written by an earlier attempt of the run, on another node: the store has it
            return ray.get(self.writer.stored.remote(self.run_id, path.name))
        stamp = self._stamp(path)
        sent = self._sent.get(path.name)
        if sent is None or sent[0] != stamp:
            stored = ray.get(self.writer.put_file.remote(self.run_id, path.name, path.read_bytes()))
            self._sent[path.name] = sent = (stamp, stored)
        return sent[1]

    def log(self) -> str:
        sys.stdout.flush()
        sys.stderr.flush()
        path = self.work_dir / LOG_NAME
        data = path.read_bytes()[self._log_sent:] if path.exists() else b""
        stored = ray.get(self.writer.append_file.remote(self.run_id, LOG_NAME, data))
        self._log_sent += len(data)
        return stored

    def __enter__(self) -> "ShippedFiles":
        log = self._printing.enter_context(open(self.work_dir / LOG_NAME, "a", encoding="utf-8"))
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting Ray task on {socket.gethostname()}\n")
        self._printing.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log)))
        self._printing.enter_context(contextlib.redirect_stderr(_Tee(sys.stderr, log)))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.log()  # what was printed after the run ended, a traceback too
        finally:
            self._printing.close()


def remote_cancel_flag(writer, run_id: str):
    """``should_stop`` for a Ray task: the run's CANCEL flag, read through the actor at most
    every CANCEL_POLL_S seconds; once set, it stays set."""
    state = {"stop": False, "asked": 0.0}

    def should_stop() -> bool:
        if not state["stop"] and time.monotonic() - state["asked"] >= CANCEL_POLL_S:
            state["stop"] = ray.get(writer.cancel_requested.remote(run_id))
            state["asked"] = time.monotonic()
        return state["stop"]

    return should_stop


def train_on_ray(writer, run_id: str, slow_steps_s: float = 0.0) -> int:
    """The body of a Ray task: the run's executor, its files in a node-local folder shipped to
    the store through ``writer``. Returns the executor's exit code."""
    with tempfile.TemporaryDirectory(prefix=f"taps-{run_id}-") as work, ShippedFiles(writer, run_id, work) as files:
        return execute(_RemoteStore(writer), run_id, files, remote_cancel_flag(writer, run_id),
                       step_delay=slow_steps_s)


class RayLauncher(Launcher):
    """A :class:`Launcher` whose runs are Ray tasks; Ray queues them by the resources they ask."""

    backend = "ray"

    def __init__(self, store: RunStore | str | os.PathLike | None = None, *, address: str | None = None,
                 gpus_per_run: float | None = None, cpus_per_run: float = 1.0):
        super().__init__(store)
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self.writer = ray.remote(StoreWriter).options(num_cpus=0).remote(str(self.root))
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.gpus_per_run = gpus_per_run if gpus_per_run is not None else (1.0 if has_gpus else 0.0)
        self.cpus_per_run = cpus_per_run
        self._task = ray.remote(train_on_ray)
        self._refs: dict[str, ray.ObjectRef] = {}

    def schedule(self) -> list[str]:
        """Submit every queued Ray run of the store that this launcher has not submitted yet."""
        started = []
        with self._lock():
            self._reap_locked()
            for run in sorted(self.store.list_runs(status="queued"), key=lambda r: r["created_at"]):
                if run.get("backend") != self.backend or run["id"] in self._refs:
                    continue
                self._refs[run["id"]] = self._task.options(
                    num_gpus=self.gpus_per_run, num_cpus=self.cpus_per_run, max_retries=0,
                ).remote(self.writer, run["id"], step_delay())  # this process's: the cluster's may not have it
                started.append(run["id"])
        return started

    def _reap_locked(self) -> list[str]:
        """Also runs whose task ended without ending its run (its worker or node died), wherever
        it ran: the local reaper only judges processes on this machine."""
        reaped = super()._reap_locked()
        refs = {self._refs[r["id"]]: r["id"] for r in self.store.list_runs(status="running") if r["id"] in self._refs}
        for ref in ray.wait(list(refs), num_returns=len(refs), timeout=0)[0] if refs else []:
            with contextlib.suppress(StoreError):  # it finished meanwhile
                self.store.finish(refs[ref], "failed", error=DISAPPEARED)
                reaped.append(refs[ref])
        return reaped

    def cancel(self, run_id: str, grace_s: float = 10.0) -> str:
        """As a local run's: the run's CANCEL flag, which its task reads through the actor, stops
        it after its current step, its last checkpoint kept in the store for a resume; after
        ``grace_s`` the task is killed. A queued run is cancelled at once. Returns the status."""
        ref = self._refs.get(run_id)
        run = self._require(run_id)
        if ref is None or run["status"] not in ("queued", "running"):
            return super().cancel(run_id, grace_s)
        (self.store.run_dir(run_id) / CANCEL_FLAG).write_text("cancel\n", encoding="utf-8")
        if run["status"] == "queued":
            ray.cancel(ref)  # a task that has not started never will; one starting sees the flag
            with contextlib.suppress(StoreError):
                self.store.finish(run_id, "cancelled")
        elif not ray.wait([ref], timeout=max(0.0, float(grace_s)))[0]:
            with self._lock():  # no reaper calls the killed task's run failed first
                ray.cancel(ref, force=True)
                ray.wait([ref], timeout=10)
                if self.store.get_run(run_id)["status"] == "running":
                    self.store.finish(run_id, "cancelled")
        return self.store.get_run(run_id)["status"]

    def resume(self, run_id: str) -> str:
        self._refs.pop(run_id, None)  # a resumed run is a new task
        return super().resume(run_id)
