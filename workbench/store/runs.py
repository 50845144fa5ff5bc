"""The runs table: creating a run (and its folder), reading and listing runs, moving a run's
status along legal transitions with its timestamps, finishing and deleting it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from taps.errors import ConfigError
from taps.training.train_config import CONFIG_VERSION, TrainConfig

from .database import Database, StoreError
from .encoding import optional_float, optional_int, to_json
from .schema import RUN_ID_RE

STATUSES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
# Legal moves; staying in the same status is always allowed (an idempotent update).
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"done", "failed", "cancelled"}),
    "done": frozenset(),
    "failed": frozenset({"queued"}),      # resume
    "cancelled": frozenset({"queued"}),   # resume
}

_FROM_CONFIG = object()  # create_run: take the value from the config
_JSON_FIELDS = ("config", "metrics", "layer_names", "layer_kinds", "layer_params", "classes", "tasks")


class RunLifecycle(Database):
    """A run from ``create_run`` (queued) through ``mark_running`` to ``finish`` or ``delete_run``."""

    def run_dir(self, run_id: str) -> Path:
        """``<root>/<run_id>/`` (not created here)."""
        if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
            raise StoreError(f"not a valid run id: {run_id!r}")
        return self.root / run_id

    @staticmethod
    def _new_id(now: float) -> str:
        return f"r-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{os.urandom(2).hex()}"

    def create_run(self, config: "Mapping | TrainConfig", *, name: str | None = None, sweep: str | None = None,
                   backend: str = "local", kind: str | None = None, lam: float | None | object = _FROM_CONFIG,
                   epochs: int | None | object = _FROM_CONFIG) -> str:
        """A new queued run; writes ``<root>/<id>/config.json``. Returns the run id
        (``r-YYYYMMDD-HHMMSS-xxxx``, UTC, so ids sort by creation to the second). ``kind``, ``lam``
        and ``epochs`` are what the caller knows of the run before it starts (the launcher asks
        the config: a budget run has no λ yet, a λ path trains more epochs than ``epochs``);
        unsaid, λ and epochs are the config's own values. The trainer's start event and final
        metrics correct them."""
        if not isinstance(config, (Mapping, TrainConfig)):
            raise StoreError(f"a run's config must be a TrainConfig or a dict, got {type(config).__name__}")
        settings = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        config = settings.to_dict()
        config_json = to_json(config, "a run's config")
        dataset = " + ".join(settings.datasets)
        now = time.time()
        for _ in range(100):
            run_id = self._new_id(now)
            folder = self.run_dir(run_id)
            try:
                folder.mkdir(parents=False, exist_ok=False)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise self._error(e, f"creating the run folder {folder}") from e
        else:  # pragma: no cover - 100 collisions of a random suffix within one second
            raise StoreError(f"could not find a free run id in {self.root}")
        try:
            tmp = folder / "config.json.tmp"
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, folder / "config.json")
            with self._tx("creating a run") as conn:
                conn.execute(
                    "INSERT INTO runs (id, name, sweep, status, method, dataset, backbone, lam, lr, config, "
                    "created_at, epochs, backend, device, kind) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name, sweep, settings.method, dataset, settings.backbone,
                     optional_float(settings.sparsity.lam if lam is _FROM_CONFIG else lam),
                     optional_float(settings.optim.lr), config_json, now,
                     optional_int(settings.optim.epochs if epochs is _FROM_CONFIG else epochs), backend,
                     _requested_device(settings.device), None if kind is None else str(kind)))
        except BaseException as e:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(e, OSError):
                raise self._error(e, f"writing {folder / 'config.json'}") from e
            raise
        return run_id

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict | None:
        if row is None:
            return None
        d = dict(row)
        for key in _JSON_FIELDS:
            if d.get(key) is not None:
                d[key] = json.loads(d[key])
        if d.get("config") is not None:
            d["config"] = current_config(d["config"])
        return d

    def get_run(self, run_id: str) -> dict | None:
        """The run's row as a dict (JSON fields decoded), or None if there is no such run."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,), f"reading run {run_id}")
        return self._row(rows[0]) if rows else None

    def list_runs(self, status: str | Iterable[str] | None = None, sweep: str | None = None,
                  limit: int | None = None) -> list[dict]:
        """Runs, newest first; ``status`` is one status or several."""
        where, params = [], []
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for s in wanted:
                self._check_status(s)
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            params += wanted
        if sweep is not None:
            where.append("sweep = ?")
            params.append(sweep)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(-1 if limit is None else int(limit))
        return [self._row(r) for r in self._read(sql, params, "listing runs")]

    def sweeps(self) -> list[str]:
        """Names of the sweeps that have runs, most recently created first."""
        rows = self._read("SELECT sweep FROM runs WHERE sweep IS NOT NULL GROUP BY sweep "
                          "ORDER BY MAX(created_at) DESC", (), "listing sweeps")
        return [r[0] for r in rows]

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in TRANSITIONS:
            raise StoreError(f"unknown run status {status!r}; expected one of {', '.join(STATUSES)}")

    def _transition(self, conn: sqlite3.Connection, run_id: str, status: str) -> str:
        """Check (inside the caller's transaction) that run_id may move to status; returns the old one."""
        self._check_status(status)
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in the run store {self.root}")
        old = row[0]
        if status != old and status not in TRANSITIONS[old]:
            allowed = ", ".join(sorted(TRANSITIONS[old])) or "nothing (it is final)"
            raise StoreError(f"run {run_id} cannot go from {old} to {status}; from {old} it can go to {allowed}")
        return old

    def _status_update(self, conn, run_id: str, old: str, status: str, now: float, extra: dict) -> None:
        sets = dict(status=status, **extra)
        if status != old:
            if status == "running":
                sets.update(started_at=now, heartbeat_at=now, finished_at=None, error=None)
            elif status == "queued":  # resume: the next attempt starts clean
                sets.update(finished_at=None, error=None, pid=None, pid_create_time=None, metrics=None)
            elif status in TERMINAL:
                sets["finished_at"] = now
        cols = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*sets.values(), run_id))

    def set_status(self, run_id: str, status: str, *, error: str | None = None) -> None:
        """Move a run to ``status`` along a legal transition (StoreError otherwise), stamping
        started_at (→ running) or finished_at (→ done/failed/cancelled)."""
        with self._tx(f"setting run {run_id} to {status}") as conn:
            old = self._transition(conn, run_id, status)
            self._status_update(conn, run_id, old, status, time.time(),
                                {"error": error} if error is not None else {})

    def mark_running(self, run_id: str, pid: int, pid_create_time: float | None, host: str | None = None,
                     device: str | None = None) -> None:
        """The worker process ``pid`` (created at ``pid_create_time``, psutil-style) runs it now."""
        extra = {"pid": int(pid), "pid_create_time": optional_float(pid_create_time),
                 "host": host or socket.gethostname()}
        if device is not None:
            extra["device"] = device
        with self._tx(f"marking run {run_id} running") as conn:
            old = self._transition(conn, run_id, "running")
            self._status_update(conn, run_id, old, "running", time.time(), extra)

    def heartbeat(self, run_id: str) -> None:
        with self._tx(f"heartbeat of run {run_id}") as conn:
            if conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id)).rowcount == 0:
                raise StoreError(f"no run {run_id!r} in the run store {self.root}")

    def finish(self, run_id: str, status: str, metrics: Mapping | None = None, error: str | None = None) -> None:
        """End a run: done, failed or cancelled, with the trainer's final metrics and/or an error."""
        if status not in TERMINAL:
            raise StoreError(f"finish() takes a final status (done, failed, cancelled), not {status!r}")
        extra: dict[str, Any] = {}
        if metrics is not None:
            extra["metrics"] = to_json(dict(metrics), "a run's metrics")
            if "lam" in metrics:  # the λ the run ended with (a budget run's own), not the config's
                extra["lam"] = optional_float(metrics["lam"])
        if error is not None:
            extra["error"] = str(error)
        with self._tx(f"finishing run {run_id}") as conn:
            old = self._transition(conn, run_id, status)
            self._status_update(conn, run_id, old, status, time.time(), extra)

    def delete_run(self, run_id: str, *, force: bool = False) -> bool:
        """Delete a run's rows and its folder. A running run is refused unless ``force``.
        Returns whether there was such a run."""
        folder = self.run_dir(run_id)
        with self._tx(f"deleting run {run_id}") as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None and row[0] == "running" and not force:
                raise StoreError(f"run {run_id} is running; cancel it before deleting it")
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))  # events cascade
        existed = row is not None or folder.exists()
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(e, f"removing the run folder {folder}") from e
        return existed


def current_config(stored: dict) -> dict:
    """A stored config in today's JSON form, whichever version wrote it (old stores hold flat
    version-1 configs); one that no longer reads (a hand-edited file) is returned as it is."""
    if stored.get("version") == CONFIG_VERSION:  # written by create_run in today's form: nothing to do
        return stored
    try:
        return TrainConfig.from_dict(stored).to_dict()
    except (ConfigError, TypeError, ValueError):
        return stored


def _requested_device(device: str | None) -> str | None:
    """The device a queued run is pinned to; None for "auto", which only the worker resolves (it
    records the device it chose when the run starts): a run never shows "auto" as its device."""
    return None if device in (None, "auto") else device
