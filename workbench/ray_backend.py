"""Runs on a Ray cluster, recorded live in the same run store (``pip install .[cluster]``).

    launcher = RayLauncher(RunStore(), address="auto")     # or None: a local Ray instance
    sweep_id, run_ids = launcher.sweep(base_config, lams=[0.1, 1, 10], baselines=True)
    launcher.wait(run_ids)

Each run is one Ray task asking for one GPU when the cluster has GPUs (else CPUs). Workers may
sit on machines that cannot see the store's disk, so they never touch it: every write goes to a
``StoreWriter`` actor started beside the launching process, the store's only Ray-side writer.
The app and notebooks read the store as usual and see cluster runs exactly like local ones. The
actor lives as long as the launching process: keep it alive (``wait``) until the sweep ends.
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import ray

from .launcher import Launcher
from .store import RunStore, StoreRecorder


class StoreWriter:
    """Actor: the run store, for workers anywhere in the cluster."""

    def __init__(self, root: str):
        self.store = RunStore(root)

    def call(self, method: str, *args, **kwargs):
        return getattr(self.store, method)(*args, **kwargs)

    def put_file(self, run_id: str, name: str, data: bytes) -> str:
        """Write a worker's file (its task pack) into the run's folder, atomically."""
        from taps.fileio import atomic_write

        return str(atomic_write(self.store.run_dir(run_id) / name, lambda fh: fh.write(data)))


class _RemoteStore:
    """The store methods a worker uses (those of StoreRecorder too), forwarded to the actor."""

    def __init__(self, writer):
        self._writer = writer

    def __getattr__(self, method: str):
        return lambda *args, **kwargs: ray.get(self._writer.call.remote(method, *args, **kwargs))


def train_on_ray(writer, run_id: str, config: dict) -> str:
    """The body of a Ray task: train in a node-local folder, report through ``writer``."""
    from taps.backbones import device_description, resolve_device
    from taps.training.trainer import TrainConfig, train

    from .processes import create_time
    from .worker import error_message

    store, recorder = _RemoteStore(writer), None
    with tempfile.TemporaryDirectory(prefix=f"taps-{run_id}-") as out:
        try:
            cfg = TrainConfig.from_dict(dict(config))
            cfg.out_dir = out
            device = device_description(resolve_device(cfg.device))
            store.mark_running(run_id, os.getpid(), create_time(os.getpid()), socket.gethostname(), device)
            recorder = StoreRecorder(store, run_id, flush_every_s=0.5)
            result = train(cfg, [recorder])
            recorder.close()
            if result.pack_path:
                data = Path(result.pack_path).read_bytes()
                store.add_artifact(run_id, "pack", ray.get(writer.put_file.remote(run_id, "task.safetensors", data)))
            store.finish(run_id, "done", metrics=result.metrics)
            return "done"
        except BaseException as exc:  # noqa: BLE001 - every failure must end the run in the store
            traceback.print_exc()
            if recorder is not None:
                with contextlib.suppress(Exception):
                    recorder.close()
            store.finish(run_id, "failed", error=error_message(exc))
            return "failed"


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
                ).remote(self.writer, run["id"], run["config"])
                started.append(run["id"])
        return started

    def cancel(self, run_id: str, grace_s: float = 10.0) -> str:
        ref = self._refs.get(run_id)
        run = self._require(run_id)
        if ref is None or run["status"] not in ("queued", "running"):
            return super().cancel(run_id, grace_s)
        ray.cancel(ref, force=True)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and not ray.wait([ref], timeout=0.2)[0]:
            pass
        if self.store.get_run(run_id)["status"] in ("queued", "running"):
            self.store.finish(run_id, "cancelled")
        return self.store.get_run(run_id)["status"]

    def resume(self, run_id: str) -> str:
        self._refs.pop(run_id, None)  # a resumed run is a new task
        return super().resume(run_id)
