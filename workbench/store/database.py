"""Opening the run store's database: the runs folder, one SQLite connection per thread (WAL,
busy timeout, foreign keys), migrations up to this code's schema, write transactions and reads,
and every sqlite/OS failure turned into a :class:`StoreError` that names the path and says why."""
from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from taps.errors import TAPSError

from .schema import MIGRATIONS, RUN_ID_RE, SCHEMA_VERSION

DB_NAME = "runs.sqlite"
ENV_VAR = "TAPS_RUNS_DIR"
BUSY_TIMEOUT_S = 10.0


class StoreError(TAPSError, RuntimeError):
    """The run store cannot be opened, read or written; the message says which path and why."""


def default_root() -> Path:
    """``$TAPS_RUNS_DIR`` if set, else ``./runs`` in the current working directory."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.cwd() / "runs"


class _Connection(sqlite3.Connection):
    """A plain connection whose methods can be patched per instance (tests simulate a full disk)."""


class Database:
    """The runs folder ``root`` and its database: connections, transactions and reads. It knows
    nothing of runs; :class:`~workbench.store.RunStore` adds them and their events."""

    def __init__(self, root: str | os.PathLike | None = None, *, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.root = self.root.absolute()
        self.db_path = self.root / DB_NAME
        self.busy_timeout_s = float(busy_timeout_s)
        self.transactions = 0  # committed write transactions through this object (for tests/benchmarks)
        self._local = threading.local()
        self._conns: list[list] = []  # [connection, the thread using it, process id]
        self._conns_lock = threading.Lock()
        self._prepare_root()
        self.connection()  # open now: a bad root or database fails here, not on first use

    def __reduce__(self):  # connections are per process: a child reopens the store
        return (_reopen, (self.__class__, str(self.root), self.busy_timeout_s))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __enter__(self) -> "Database":
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
        """This thread's connection: on first use, the one a thread that has ended left, else a
        new one; a forked child opens its own. Streamlit runs every script run in a new thread:
        a new connection each time kept two more files open per poll of a watched run (175 after
        70 s) and cost the pragmas and schema check again."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        me, pid = threading.current_thread(), os.getpid()
        with self._conns_lock:
            entry = next((e for e in self._conns if e[2] == pid and not e[1].is_alive()), None)
            if entry is not None:
                entry[1] = me
        if entry is not None:
            conn = entry[0]
            if conn.in_transaction:  # cannot happen through _tx; never carry one over
                conn.rollback()
        else:
            conn = self._open()
            with self._conns_lock:
                self._conns.append([conn, me, pid])
        self._local.conn, self._local.pid = conn, pid
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
                         if p.is_dir() and RUN_ID_RE.fullmatch(p.name) and (p / "config.json").is_file())
        if orphans:
            more = ", …" if len(orphans) > 3 else ""
            raise StoreError(f"the run store database {self.db_path} is empty or missing, but {self.root} holds "
                             f"{len(orphans)} run folder(s) ({', '.join(orphans[:3])}{more}): the database was "
                             "lost or truncated. Restore it from a backup, or move the run folders elsewhere "
                             "to start a fresh store.")

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._conns_lock:
            conns, self._conns = [e[0] for e in self._conns], []
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


def _reopen(cls, root: str, busy_timeout_s: float) -> Database:
    return cls(root, busy_timeout_s=busy_timeout_s)
