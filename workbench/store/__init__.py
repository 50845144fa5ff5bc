"""The run store: every run the workbench knows, as data on disk.

    store = RunStore()                                  # $TAPS_RUNS_DIR, else ./runs
    run_id = store.create_run(TrainConfig.from_flat(lam=0.5), name="λ=0.5", sweep="lam-sweep")
    store.mark_running(run_id, os.getpid(), create_time, socket.gethostname(), "cpu")
    with StoreRecorder(store, run_id) as rec:           # a taps.training.trainer callback
        result = train(config, callbacks=[rec])
    store.finish(run_id, result.status, metrics=result.metrics)

One SQLite database ``<root>/runs.sqlite`` (WAL mode, a busy timeout, ``synchronous=NORMAL``,
foreign keys on) and one folder per run ``<root>/<run_id>/`` for its config.json, log,
checkpoint and task pack. Standard library only, so the dashboard, the launcher and the workers
read and write the same store without a server (configs are read with taps' torch-free
settings module, so stored configs of any version come back in today's form).

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

The package: ``schema`` (tables and migrations), ``database`` (connections, transactions,
errors), ``runs`` (a run's lifecycle), ``events`` (what runs record, and the queries over it),
``run_store`` (RunStore, the two together), ``recorder`` (StoreRecorder) and ``reader``
(RunReader: the reads a Launcher passes on).
"""
from .database import BUSY_TIMEOUT_S, DB_NAME, ENV_VAR, StoreError, default_root
from .events import SCORES_SQL, STEPS_SINCE_SQL
from .reader import RunReader
from .recorder import StoreRecorder
from .run_store import RunStore
from .runs import STATUSES, TERMINAL, TRANSITIONS
from .schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "RunStore", "RunReader", "StoreRecorder", "StoreError", "SCHEMA_VERSION", "STATUSES", "TERMINAL",
    "DB_NAME", "ENV_VAR", "default_root", "BUSY_TIMEOUT_S", "MIGRATIONS", "TRANSITIONS",
    "STEPS_SINCE_SQL", "SCORES_SQL",
]
