"""The run store: every run the workbench knows, as data on disk.

    store = RunStore()                                  # $TAPS_RUNS_DIR, else ./runs
    run_id = store.create_run(TrainConfig(lam=0.5).to_dict(), name="λ=0.5", sweep="lam-sweep")
    store.mark_running(run_id, os.getpid(), create_time, socket.gethostname(), "cpu")
    with StoreRecorder(store, run_id) as rec:           # a taps.trainer callback
        result = train(config, callbacks=[rec])
    store.finish(run_id, result.status, metrics=result.metrics)

One SQLite database ``<root>/runs.sqlite`` (WAL mode, a busy timeout, ``synchronous=NORMAL``,
foreign keys on) and one folder per run ``<root>/<run_id>/`` for its config.json, log,
checkpoint and task pack. Standard library only, so the dashboard, the launcher and the workers
read and write the same store without a server.

Design points (see DESIGN.md §6, "Trackers"):

- several processes write at once (one worker per run, the launcher, the app): every write is
  one ``BEGIN IMMEDIATE`` transaction, so a writer waits on the busy timeout instead of failing
  with "database is locked"; readers never block writers (WAL);
- steps are written in batches (:class:`StoreRecorder`), one transaction per batch, and each
  batch doubles as the run's heartbeat;
- per-layer gate scores are one float32 BLOB per step (a steps × layers matrix per run), not one
  column or metric key per layer;
- "events of run R after step N" is a range scan of the ``(run_id, step)`` primary key;
- a status only moves along legal transitions, with its timestamps; a run records its worker's
  pid *and* that process's create time, so a reused pid is not mistaken for a live run;
- a full disk, a corrupt or foreign database file, an unwritable folder or a schema newer than
  this code raise :class:`StoreError` saying which path and why; data committed before a failed
  write stays intact.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import threading
import time
from array import array
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from taps.errors import TAPSError
from taps.schedule import total_epochs

__all__ = [
    "RunStore", "StoreRecorder", "StoreError", "SCHEMA_VERSION", "STATUSES", "TERMINAL",
    "DB_NAME", "ENV_VAR", "default_root",
]

SCHEMA_VERSION = 3
DB_NAME = "runs.sqlite"
ENV_VAR = "TAPS_RUNS_DIR"
BUSY_TIMEOUT_S = 10.0

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

_JSON_FIELDS = ("config", "metrics", "layer_names", "layer_kinds", "layer_params", "classes", "tasks")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STEP_FIELDS = ("epoch", "loss", "task_loss", "penalty", "lam_now", "lr", "active_layers",
                "images_per_sec", "t")
_EPOCH_FIELDS = ("epochs", "train_loss", "train_acc", "val_acc", "test_acc",
                 "task_specific_layers_pct", "additional_params_pct", "active_layers", "seconds", "t")
_FRONTIER_METRICS = ("task_specific_layers_pct", "additional_params_pct", "val_acc", "test_acc")

# Migrations: version → statements (run one by one inside one transaction; executescript would
# commit half-way). Add a new version here and bump SCHEMA_VERSION; never edit a released one.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE runs (
            id              TEXT PRIMARY KEY,
            name            TEXT,
            sweep           TEXT,
            status          TEXT NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            method          TEXT,
            dataset         TEXT,
            backbone        TEXT,
            lam             REAL,
            lr              REAL,
            config          TEXT NOT NULL,          -- JSON
            device          TEXT,
            host            TEXT,
            pid             INTEGER,
            pid_create_time REAL,                   -- psutil.Process(pid).create_time()
            created_at      REAL NOT NULL,          -- unix seconds
            started_at      REAL,
            finished_at     REAL,
            heartbeat_at    REAL,
            error           TEXT,
            total_steps     INTEGER,
            last_step       INTEGER NOT NULL DEFAULT 0,
            epochs          INTEGER,
            epochs_done     INTEGER NOT NULL DEFAULT 0,
            train_size      INTEGER,
            val_size        INTEGER,
            test_size       INTEGER,
            metrics         TEXT,                   -- JSON, final metrics of the trainer
            layer_names     TEXT,                   -- JSON lists, from the start event
            layer_kinds     TEXT,
            layer_params    TEXT,
            classes         TEXT,
            backend         TEXT NOT NULL DEFAULT 'local'
        )""",
        "CREATE INDEX runs_by_created ON runs(created_at)",
        "CREATE INDEX runs_by_status ON runs(status, created_at)",
        "CREATE INDEX runs_by_sweep ON runs(sweep, created_at)",
        """CREATE TABLE steps (
            run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step            INTEGER NOT NULL,
            epoch           INTEGER,
            loss            REAL,
            task_loss       REAL,
            penalty         REAL,
            lam_now         REAL,
            lr              REAL,
            active_layers   INTEGER,
            images_per_sec  REAL,
            t               REAL,                   -- unix seconds when the step happened
            PRIMARY KEY (run_id, step)
        ) WITHOUT ROWID""",
        """CREATE TABLE step_scores (
            run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step            INTEGER NOT NULL,
            scores          BLOB NOT NULL,          -- little-endian float32 × L layers
            PRIMARY KEY (run_id, step)
        ) WITHOUT ROWID""",
        """CREATE TABLE epochs (
            run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            epoch           INTEGER NOT NULL,
            epochs          INTEGER,
            train_loss      REAL,
            train_acc       REAL,
            val_acc         REAL,
            test_acc        REAL,
            task_specific_layers_pct REAL,
            additional_params_pct    REAL,
            active_layers   INTEGER,
            seconds         REAL,
            t               REAL,
            PRIMARY KEY (run_id, epoch)
        ) WITHOUT ROWID""",
        """CREATE TABLE artifacts (
            id              INTEGER PRIMARY KEY,
            run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            kind            TEXT NOT NULL,          -- checkpoint | pack | log | …
            path            TEXT NOT NULL,
            bytes           INTEGER,
            created_at      REAL NOT NULL,
            UNIQUE (run_id, path)
        )""",
        "CREATE INDEX artifacts_by_run ON artifacts(run_id, kind)",
    ),
    # Joint multi-task runs: their datasets, each task's loss per step and metrics per epoch (JSON).
    2: (
        "ALTER TABLE runs ADD COLUMN tasks TEXT",
        "ALTER TABLE steps ADD COLUMN task_losses TEXT",
        "ALTER TABLE epochs ADD COLUMN tasks TEXT",
    ),
    # A run's own warning about an epoch (e.g. training loss still at chance after the first).
    3: ("ALTER TABLE epochs ADD COLUMN warning TEXT",),
}

# Public so tests and tools can EXPLAIN it: an indexed range scan of the steps' primary key.
STEPS_SINCE_SQL = (
    "SELECT s.step, s.epoch, s.loss, s.task_loss, s.penalty, s.lam_now, s.lr, s.active_layers, "
    "s.images_per_sec, s.t, s.task_losses{scores} FROM steps AS s{join} "
    "WHERE s.run_id = ? AND s.step > ? ORDER BY s.step LIMIT ?"
)
SCORES_SQL = ("SELECT step, scores FROM step_scores WHERE run_id = ? AND step > ? AND step % ? = 0 "
              "ORDER BY step {order} LIMIT ?")


class StoreError(TAPSError, RuntimeError):
    """The run store cannot be opened, read or written; the message says which path and why."""


def default_root() -> Path:
    """``$TAPS_RUNS_DIR`` if set, else ``./runs`` in the current working directory."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.cwd() / "runs"


class _Connection(sqlite3.Connection):
    """A plain connection whose methods can be patched per instance (tests simulate a full disk)."""


def _encode_scores(scores: Iterable[float]) -> bytes:
    a = array("f", scores)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def _decode_scores(blob: bytes) -> list[float]:
    a = array("f")
    a.frombytes(blob)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def _event_dict(event: Any) -> dict:
    """A dataclass event (taps.trainer.StepEvent …) or a mapping, as a shallow dict copy."""
    if is_dataclass(event) and not isinstance(event, type):
        return {f.name: getattr(event, f.name) for f in fields(event)}
    if isinstance(event, Mapping):
        return dict(event)
    raise TypeError(f"expected a taps.trainer event dataclass or a dict, got {type(event).__name__}")


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serializable: {e}") from e


class RunStore:
    """Runs, their step/epoch events, per-layer scores and artifacts, in ``root``.

    Safe to use from several threads (one SQLite connection per thread) and several processes
    (SQLite's own locking, WAL, busy timeout). Pickles as its root, so it can be handed to a
    ``spawn`` child process.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.root = self.root.absolute()
        self.db_path = self.root / DB_NAME
        self.busy_timeout_s = float(busy_timeout_s)
        self.transactions = 0  # committed write transactions through this object (for tests/benchmarks)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._prepare_root()
        self.connection()  # open now: a bad root or database fails here, not on first use

    # ----------------------------------------------------------------- opening, errors
    def __reduce__(self):  # connections are per process: a child reopens the store
        return (_reopen, (self.__class__, str(self.root), self.busy_timeout_s))

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prepare_root(self) -> None:
        root = self.root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError as e:
            raise StoreError(f"cannot use {root} as the runs folder: a file is in the way ({e}); "
                             f"point {ENV_VAR} at a folder") from e
        except OSError as e:
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise StoreError(f"cannot create the runs folder {root}: {why} ({e}); "
                             f"point {ENV_VAR} at a writable folder") from e
        if not root.is_dir():
            raise StoreError(f"cannot use {root} as the runs folder: it is not a folder; "
                             f"point {ENV_VAR} at a folder")
        if not os.access(root, os.W_OK | os.X_OK):
            raise StoreError(f"the runs folder {root} is not writable by this user; "
                             f"fix its permissions or point {ENV_VAR} at a writable folder")

    def _error(self, e: BaseException, doing: str) -> StoreError:
        """Translate an sqlite3/OS error into a StoreError that says which path and why."""
        msg = str(e)
        low = msg.lower()
        db = self.db_path
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "disk is full" in low or "sqlite_full" in low:
            return StoreError(f"cannot write to the run store {db} while {doing}: the disk is full ({msg}). "
                              "Data written before this is intact; free some space, then resume the run.")
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StoreError(f"the run store database {db} is corrupt or not an SQLite database ({msg}). "
                              f"Move it aside and open the store again to start a fresh one; the runs' "
                              f"folders in {self.root} are kept.")
        if "locked" in low or "busy" in low:
            return StoreError(f"the run store {db} stayed locked by another process for more than "
                              f"{self.busy_timeout_s:g} s while {doing} ({msg}); try again, or look for a "
                              "process stuck holding it.")
        if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
            return StoreError(f"cannot open or write the run store {db} while {doing} ({msg}); check that "
                              f"{self.root} is a writable folder, or point {ENV_VAR} elsewhere.")
        if isinstance(e, OSError):
            return StoreError(f"run store {self.root}: {doing} failed: {e}")
        return StoreError(f"run store {db}: {doing} failed: {msg}")

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use; a forked child opens its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = self._open()
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False, factory=_Connection)
        except sqlite3.Error as e:
            raise self._error(e, "opening it") from e
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._set_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise self._error(e, "opening it") from e
            raise
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new database to WAL needs a lock that a concurrent opener may hold briefly.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if str(mode).lower() != "wal":
            raise StoreError(f"the run store {self.db_path} cannot use WAL mode (got {mode!r}); "
                             "keep the runs folder on a local file system")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"the run store {self.db_path} has schema version {version}, newer than this "
                             f"code's {SCHEMA_VERSION}; upgrade taps-workbench, or point {ENV_VAR} at "
                             "another folder")
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            if version == 0:
                self._refuse_lost_database()
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

    def _refuse_lost_database(self) -> None:
        """A new, empty database beside run folders means the old one was deleted or truncated
        to nothing: starting afresh would show an empty list while the runs are on disk."""
        orphans = sorted(p.name for p in self.root.iterdir()
                         if p.is_dir() and _RUN_ID_RE.fullmatch(p.name) and (p / "config.json").is_file())
        if orphans:
            more = ", …" if len(orphans) > 3 else ""
            raise StoreError(f"the run store database {self.db_path} is empty or missing, but {self.root} holds "
                             f"{len(orphans)} run folder(s) ({', '.join(orphans[:3])}{more}): the database was "
                             "lost or truncated. Restore it from a backup, or move the run folders elsewhere "
                             "to start a fresh store.")

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    @contextmanager
    def _tx(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; an error rolls everything in it back and becomes a StoreError."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._error(e, doing) from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                try:
                    conn.rollback()
                except sqlite3.Error:
                    pass
            if isinstance(e, sqlite3.IntegrityError) and "foreign key" in str(e).lower():
                raise StoreError(f"run store {self.db_path}: {doing} failed: no such run") from e
            if isinstance(e, (sqlite3.Error, OSError)):
                raise self._error(e, doing) from e
            raise
        self.transactions += 1

    def _read(self, sql: str, params: tuple | list = (), doing: str = "reading") -> list[sqlite3.Row]:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(e, doing) from e

    # ----------------------------------------------------------------- runs
    def run_dir(self, run_id: str) -> Path:
        """``<root>/<run_id>/`` (not created here)."""
        if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
            raise StoreError(f"not a valid run id: {run_id!r}")
        return self.root / run_id

    @staticmethod
    def _new_id(now: float) -> str:
        return f"r-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{os.urandom(2).hex()}"

    def create_run(self, config: Mapping | Any, *, name: str | None = None, sweep: str | None = None,
                   backend: str = "local") -> str:
        """A new queued run; writes ``<root>/<id>/config.json``. Returns the run id
        (``r-YYYYMMDD-HHMMSS-xxxx``, UTC, so ids sort by creation to the second)."""
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        elif is_dataclass(config) and not isinstance(config, type):
            config = _event_dict(config)
        if not isinstance(config, Mapping):
            raise StoreError(f"a run's config must be a dict, got {type(config).__name__}")
        config = dict(config)
        config_json = _dumps(config, "a run's config")
        dataset = " + ".join(config["tasks"]) if config.get("tasks") else config.get("dataset")
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
                    "created_at, epochs, backend, device) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name, sweep, config.get("method"), dataset, config.get("backbone"),
                     _opt_float(config.get("lam")), _opt_float(config.get("lr")), config_json, now,
                     _planned_epochs(config), backend, _requested_device(config)))
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
        return d

    def get_run(self, run_id: str) -> dict | None:
        """The run's row as a dict (JSON fields decoded), or None if there is no such run."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,), f"reading run {run_id}")
        return self._row(rows[0]) if rows else None

    def _require(self, run_id: str) -> dict:
        run = self.get_run(run_id)
        if run is None:
            raise StoreError(f"no run {run_id!r} in the run store {self.root}")
        return run

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
        extra = {"pid": int(pid), "pid_create_time": _opt_float(pid_create_time),
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
            extra["metrics"] = _dumps(dict(metrics), "a run's metrics")
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

    # ----------------------------------------------------------------- events
    def record_start(self, run_id: str, start: Mapping | Any) -> None:
        """The trainer's StartEvent: layers, classes, sizes, total steps. A (re)start at epoch k
        drops recorded steps and epochs from epoch k on: the trainer writes them again."""
        d = _event_dict(start)
        start_epoch = int(d.get("start_epoch") or 0)
        with self._tx(f"recording the start of run {run_id}") as conn:
            cur = conn.execute(
                "UPDATE runs SET layer_names = ?, layer_kinds = ?, layer_params = ?, classes = ?, "
                "total_steps = COALESCE(?, total_steps), device = COALESCE(?, device), train_size = ?, "
                "val_size = ?, test_size = ?, epochs = COALESCE(?, epochs), heartbeat_at = ?, "
                "epochs_done = MIN(epochs_done, ?), tasks = ? WHERE id = ?",
                (_dumps(list(d.get("layer_names") or []), "layer names"),
                 _dumps(list(d.get("layer_kinds") or []), "layer kinds"),
                 _dumps([int(p) for p in d.get("layer_params") or []], "layer parameters"),
                 _dumps(list(d.get("classes") or []), "classes"),
                 _opt_int(d.get("total_steps")), d.get("device"), _opt_int(d.get("train_size")),
                 _opt_int(d.get("val_size")), _opt_int(d.get("test_size")),
                 _opt_int(d.get("total_epochs")) or _planned_epochs(d.get("config") or {}), time.time(), start_epoch,
                 _dumps(list(d["tasks"]), "tasks") if d.get("tasks") else None, run_id))
            if cur.rowcount == 0:
                raise StoreError(f"no run {run_id!r} in the run store {self.root}")
            conn.execute("DELETE FROM step_scores WHERE run_id = ? AND step IN "
                         "(SELECT step FROM steps WHERE run_id = ? AND epoch >= ?)", (run_id, run_id, start_epoch))
            conn.execute("DELETE FROM steps WHERE run_id = ? AND epoch >= ?", (run_id, start_epoch))
            conn.execute("DELETE FROM epochs WHERE run_id = ? AND epoch >= ?", (run_id, start_epoch))
            last = conn.execute("SELECT MAX(step) FROM steps WHERE run_id = ?", (run_id,)).fetchone()[0]
            conn.execute("UPDATE runs SET last_step = ? WHERE id = ?", (last or 0, run_id))

    def record_steps(self, run_id: str, steps: list[Mapping]) -> None:
        """A batch of StepEvent dicts (with their 'scores' list) in one transaction; a step that is
        already there is replaced. Also the run's heartbeat."""
        if not steps:
            return
        rows, score_rows = [], []
        now = time.time()
        last = 0
        total = None
        for d in steps:
            step = int(d["step"])
            last = max(last, step)
            total = d.get("total_steps", total)
            rows.append((run_id, step, _opt_int(d.get("epoch")), _opt_float(d.get("loss")),
                         _opt_float(d.get("task_loss")), _opt_float(d.get("penalty")),
                         _opt_float(d.get("lam_now")), _opt_float(d.get("lr")),
                         _opt_int(d.get("active_layers")), _opt_float(d.get("images_per_sec")),
                         float(d.get("t") or now),
                         _dumps([float(v) for v in d["task_losses"]], "task losses") if d.get("task_losses") else None))
            scores = d.get("scores")
            if scores is not None:
                score_rows.append((run_id, step, _encode_scores(scores)))
        with self._tx(f"recording {len(rows)} steps of run {run_id}") as conn:
            conn.executemany("INSERT OR REPLACE INTO steps (run_id, step, epoch, loss, task_loss, penalty, "
                             "lam_now, lr, active_layers, images_per_sec, t, task_losses) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if score_rows:
                conn.executemany("INSERT OR REPLACE INTO step_scores (run_id, step, scores) VALUES (?, ?, ?)",
                                 score_rows)
            conn.execute("UPDATE runs SET last_step = ?, total_steps = COALESCE(?, total_steps), "
                         "heartbeat_at = ? WHERE id = ?", (last, _opt_int(total), now, run_id))

    def record_epoch(self, run_id: str, epoch: Mapping | Any) -> None:
        """One EpochEvent (replaces a recorded epoch of the same number). Also a heartbeat."""
        d = _event_dict(epoch)
        now = time.time()
        e = int(d["epoch"])
        values = [_opt_int(d.get("epochs"))] + [_opt_float(d.get(k)) for k in _EPOCH_FIELDS[1:7]] + \
                 [_opt_int(d.get("active_layers")), _opt_float(d.get("seconds")), float(d.get("t") or now),
                  _dumps(d["tasks"], "per-task metrics") if d.get("tasks") else None, d.get("warning")]
        with self._tx(f"recording epoch {e} of run {run_id}") as conn:
            conn.execute(f"INSERT OR REPLACE INTO epochs (run_id, epoch, {', '.join(_EPOCH_FIELDS)}, tasks, warning) "
                         f"VALUES ({', '.join('?' * (len(_EPOCH_FIELDS) + 4))})", (run_id, e, *values))
            conn.execute("UPDATE runs SET epochs_done = MAX(epochs_done, ?), heartbeat_at = ? WHERE id = ?",
                         (e + 1, now, run_id))

    def add_artifact(self, run_id: str, kind: str, path: str | os.PathLike) -> dict:
        """Register a file of the run (checkpoint, pack, log…); re-adding a path updates its size."""
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError:
            size = None
        now = time.time()
        with self._tx(f"adding a {kind} artifact to run {run_id}") as conn:
            conn.execute("INSERT INTO artifacts (run_id, kind, path, bytes, created_at) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (run_id, path) DO UPDATE SET kind = excluded.kind, bytes = excluded.bytes, "
                         "created_at = excluded.created_at", (run_id, kind, str(p), size, now))
        return {"run_id": run_id, "kind": kind, "path": str(p), "bytes": size, "created_at": now}

    def artifacts(self, run_id: str, kind: str | None = None) -> list[dict]:
        sql, params = "SELECT run_id, kind, path, bytes, created_at FROM artifacts WHERE run_id = ?", [run_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [dict(r) for r in self._read(sql + " ORDER BY id", params, f"listing artifacts of run {run_id}")]

    # ----------------------------------------------------------------- reading events
    def steps_since(self, run_id: str, after_step: int = 0, limit: int | None = None, *,
                    with_scores: bool = False) -> list[dict]:
        """Steps with ``step > after_step`` in order (an indexed range scan); with their
        'scores' lists if ``with_scores``."""
        sql = STEPS_SINCE_SQL.format(
            scores=", sc.scores" if with_scores else "",
            join=" LEFT JOIN step_scores AS sc ON sc.run_id = s.run_id AND sc.step = s.step" if with_scores else "")
        rows = self._read(sql, (run_id, int(after_step), -1 if limit is None else int(limit)),
                          f"reading steps of run {run_id}")
        out = []
        for r in rows:
            d = dict(r)
            if d["task_losses"] is not None:
                d["task_losses"] = json.loads(d["task_losses"])
            if with_scores:
                d["scores"] = _decode_scores(d["scores"]) if d["scores"] is not None else None
            out.append(d)
        return out

    def scores_matrix(self, run_id: str, after_step: int = 0, every: int = 1,
                      limit: int | None = None) -> tuple[list[int], list[list[float]]]:
        """Per-layer scores as (steps, matrix[len(steps)][L]) for heatmaps: steps after
        ``after_step`` whose number is a multiple of ``every`` (so live polling with a growing
        ``after_step`` picks the same rows), and only the last ``limit`` of them if given."""
        every = max(1, int(every))
        order = "ASC" if limit is None else "DESC"
        rows = self._read(SCORES_SQL.format(order=order),
                          (run_id, int(after_step), every, -1 if limit is None else int(limit)),
                          f"reading scores of run {run_id}")
        if limit is not None:
            rows = rows[::-1]
        return [r[0] for r in rows], [_decode_scores(r[1]) for r in rows]

    def epochs(self, run_id: str) -> list[dict]:
        rows = self._read(f"SELECT epoch, {', '.join(_EPOCH_FIELDS)}, tasks, warning FROM epochs WHERE run_id = ? "
                          "ORDER BY epoch", (run_id,), f"reading epochs of run {run_id}")
        out = [dict(r) for r in rows]
        for d in out:
            d["tasks"] = json.loads(d["tasks"]) if d["tasks"] is not None else None
        return out

    def frontier(self, sweep: str | None = None, run_ids: Iterable[str] | None = None) -> list[dict]:
        """Finished (done) runs' final trade-off: run_id, name, sweep, method, dataset, backbone,
        lam, lr, task_specific_layers_pct, additional_params_pct, val_acc, test_acc, and the run's
        compute (total_steps, seconds) — from each run's final metrics (runs without metrics are
        left out). Sorted by method, then λ. A joint run gives a point per task (method
        ``<method>_joint``), a λ path a point per stage (``taps_path``, with ``stage``), a budget
        run one point (``taps_budget``, with ``budget_pct``)."""
        sql = ("SELECT id, name, sweep, method, dataset, backbone, lam, lr, metrics, total_steps, "
               "finished_at - started_at AS seconds FROM runs WHERE status = 'done' AND metrics IS NOT NULL")
        params: list[Any] = []
        if sweep is not None:
            sql += " AND sweep = ?"
            params.append(sweep)
        if run_ids is not None:
            sql += " AND id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(run_ids)))
        sql += " ORDER BY method, lam, created_at"
        out = []
        for r in self._read(sql, params, "reading the frontier"):
            metrics = json.loads(r["metrics"])
            if not isinstance(metrics, dict):
                continue
            row = {"run_id": r["id"], "name": r["name"], "sweep": r["sweep"], "method": r["method"],
                   "dataset": r["dataset"], "backbone": r["backbone"], "lam": r["lam"], "lr": r["lr"],
                   "total_steps": r["total_steps"], "seconds": r["seconds"]}  # the run's compute
            per_task, path = metrics.get("tasks"), metrics.get("path")
            if isinstance(per_task, dict) and per_task:  # a joint run: one point per task
                for task, m in per_task.items():
                    out.append(dict(row, dataset=task, method=f"{r['method']}_joint",
                                    **{k: m.get(k) for k in _FRONTIER_METRICS}))
                continue
            if isinstance(path, list) and path:  # a λ path: one point per stage snapshot
                for point in path:
                    out.append(dict(row, method="taps_path", lam=point.get("lam"), stage=point.get("stage"),
                                    **{k: point.get(k) for k in _FRONTIER_METRICS}))
                continue
            if metrics.get("budget_pct") is not None:  # budget mode: λ is what the controller ended at
                row.update(method="taps_budget", lam=metrics.get("lam_final"), budget_pct=metrics["budget_pct"],
                           budget_kind=metrics.get("budget_kind"))
            row.update({k: metrics.get(k) for k in _FRONTIER_METRICS})
            out.append(row)
        return out


def _requested_device(config: Mapping) -> str | None:
    """The device a queued run is pinned to; None for "auto", which only the worker resolves (it
    records the device it chose when the run starts): a run never shows "auto" as its device."""
    device = config.get("device")
    return None if device in (None, "auto") else device


def _planned_epochs(config: Mapping) -> int | None:
    """The epochs a run's config trains in all (a λ path adds its later stages)."""
    epochs = _opt_int(config.get("epochs"))
    if epochs is None:
        return None
    return total_epochs(epochs, config.get("lam_path"), _opt_int(config.get("path_stage_epochs")) or 1)


def _reopen(cls, root: str, busy_timeout_s: float) -> RunStore:
    return cls(root, busy_timeout_s=busy_timeout_s)


def _steps_per_epoch(start: Mapping) -> int:
    """Steps in one epoch, as the trainers count them (0: unknown): whole batches of the training
    split for one task, the longest task's for joint training (as many epochs as configured)."""
    config = start.get("config") or {}
    batch, size, total, epochs = (config.get("batch_size"), start.get("train_size"), start.get("total_steps"),
                                  config.get("epochs"))
    if start.get("tasks"):
        return int(total) // int(epochs) if total and epochs else 0
    return max(1, int(size) // int(batch)) if size and batch else 0


class StoreRecorder:
    """A taps.trainer callback that records a run's events into a RunStore.

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
        d = _event_dict(event)
        self.store.record_start(self.run_id, d)
        if self.flush_each_epoch:
            self._steps_per_epoch = _steps_per_epoch(d)
        self._last_flush = time.monotonic()

    def on_step(self, event) -> None:
        d = _event_dict(event)
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
        self.store.record_epoch(self.run_id, _event_dict(event))

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
