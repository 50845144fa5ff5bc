"""The run store's tables, as the migrations that build them, and the form of a run's id (also
its folder's name)."""
from __future__ import annotations

import re

SCHEMA_VERSION = 4
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

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
    # How a run trains (taps.training.points.RunKind), and λ as used: none for a baseline (its
    # config keeps the default λ all the same), a budget run's where its controller ended.
    4: (
        "ALTER TABLE runs ADD COLUMN kind TEXT",
        """UPDATE runs SET kind = CASE
            WHEN json_array_length(config, '$.tasks') > 0 THEN 'joint'
            WHEN json_array_length(config, '$.lam_path') > 0 THEN 'path'
            WHEN json_extract(config, '$.budget_pct') IS NOT NULL THEN 'budget'
            ELSE 'single' END""",
        "UPDATE runs SET lam = NULL WHERE method IS NOT 'taps'",
        "UPDATE runs SET lam = json_extract(metrics, '$.lam_final') WHERE kind = 'budget'",
    ),
}
