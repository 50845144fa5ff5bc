"""What a run records as it trains: its start, batches of steps with their per-layer scores,
epochs and artifacts; and the reads of them: steps since N (live polling), the scores matrix
(heatmaps), epochs, and the frontier of finished runs."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .database import Database, StoreError
from .encoding import decode_scores, encode_scores, event_dict, optional_float, optional_int, to_json
from .legacy import points_from_old_metrics

_EPOCH_FIELDS = ("epochs", "train_loss", "train_acc", "val_acc", "test_acc",
                 "task_specific_layers_pct", "additional_params_pct", "active_layers", "seconds", "t")

# Public so tests and tools can EXPLAIN it: an indexed range scan of the steps' primary key.
STEPS_SINCE_SQL = (
    "SELECT s.step, s.epoch, s.loss, s.task_loss, s.penalty, s.lam_now, s.lr, s.active_layers, "
    "s.images_per_sec, s.t, s.task_losses{scores} FROM steps AS s{join} "
    "WHERE s.run_id = ? AND s.step > ? ORDER BY s.step LIMIT ?"
)
SCORES_SQL = ("SELECT step, scores FROM step_scores WHERE run_id = ? AND step > ? AND step % ? = 0 "
              "ORDER BY step {order} LIMIT ?")


class RunEvents(Database):
    """Recording a run's events as the trainer emits them, and reading them back."""

    def record_start(self, run_id: str, start: Mapping | Any) -> None:
        """The trainer's StartEvent: layers, classes, sizes, total steps. A (re)start at epoch k
        drops recorded steps and epochs from epoch k on: the trainer writes them again."""
        d = event_dict(start)
        start_epoch = int(d.get("start_epoch") or 0)
        with self._tx(f"recording the start of run {run_id}") as conn:
            cur = conn.execute(
                "UPDATE runs SET layer_names = ?, layer_kinds = ?, layer_params = ?, classes = ?, "
                "total_steps = COALESCE(?, total_steps), device = COALESCE(?, device), train_size = ?, "
                "val_size = ?, test_size = ?, epochs = COALESCE(?, epochs), heartbeat_at = ?, "
                "epochs_done = MIN(epochs_done, ?), tasks = ? WHERE id = ?",
                (to_json(list(d.get("layer_names") or []), "layer names"),
                 to_json(list(d.get("layer_kinds") or []), "layer kinds"),
                 to_json([int(p) for p in d.get("layer_params") or []], "layer parameters"),
                 to_json(list(d.get("classes") or []), "classes"),
                 optional_int(d.get("total_steps")), d.get("device"), optional_int(d.get("train_size")),
                 optional_int(d.get("val_size")), optional_int(d.get("test_size")),
                 optional_int(d.get("total_epochs")), time.time(), start_epoch,
                 to_json(list(d["tasks"]), "tasks") if d.get("tasks") else None, run_id))
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
            rows.append((run_id, step, optional_int(d.get("epoch")), optional_float(d.get("loss")),
                         optional_float(d.get("task_loss")), optional_float(d.get("penalty")),
                         optional_float(d.get("lam_now")), optional_float(d.get("lr")),
                         optional_int(d.get("active_layers")), optional_float(d.get("images_per_sec")),
                         float(d.get("t") or now),
                         to_json([float(v) for v in d["task_losses"]], "task losses") if d.get("task_losses") else None))
            scores = d.get("scores")
            if scores is not None:
                score_rows.append((run_id, step, encode_scores(scores)))
        with self._tx(f"recording {len(rows)} steps of run {run_id}") as conn:
            conn.executemany("INSERT OR REPLACE INTO steps (run_id, step, epoch, loss, task_loss, penalty, "
                             "lam_now, lr, active_layers, images_per_sec, t, task_losses) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if score_rows:
                conn.executemany("INSERT OR REPLACE INTO step_scores (run_id, step, scores) VALUES (?, ?, ?)",
                                 score_rows)
            conn.execute("UPDATE runs SET last_step = ?, total_steps = COALESCE(?, total_steps), "
                         "heartbeat_at = ? WHERE id = ?", (last, optional_int(total), now, run_id))

    def record_epoch(self, run_id: str, epoch: Mapping | Any) -> None:
        """One EpochEvent (replaces a recorded epoch of the same number). Also a heartbeat."""
        d = event_dict(epoch)
        now = time.time()
        e = int(d["epoch"])
        values = [optional_int(d.get("epochs"))] + [optional_float(d.get(k)) for k in _EPOCH_FIELDS[1:7]] + \
                 [optional_int(d.get("active_layers")), optional_float(d.get("seconds")), float(d.get("t") or now),
                  to_json(d["tasks"], "per-task metrics") if d.get("tasks") else None, d.get("warning")]
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
                d["scores"] = decode_scores(d["scores"]) if d["scores"] is not None else None
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
        return [r[0] for r in rows], [decode_scores(r[1]) for r in rows]

    def epochs(self, run_id: str) -> list[dict]:
        rows = self._read(f"SELECT epoch, {', '.join(_EPOCH_FIELDS)}, tasks, warning FROM epochs WHERE run_id = ? "
                          "ORDER BY epoch", (run_id,), f"reading epochs of run {run_id}")
        out = [dict(r) for r in rows]
        for d in out:
            d["tasks"] = json.loads(d["tasks"]) if d["tasks"] is not None else None
        return out

    def frontier(self, sweep: str | None = None, run_ids: Iterable[str] | None = None) -> list[dict]:
        """The frontier points of finished (done) runs, as their trainers reported them (see
        ``taps.training.points``): kind, dataset, λ as used, stage, budget, val_acc, test_acc,
        task_specific_layers_pct, additional_params_pct; with the run's run_id, name, sweep, method,
        backbone, lr and compute (total_steps, seconds). Sorted by method, then λ. A joint run
        gives a point per task, a λ path a point per stage."""
        sql = ("SELECT id, name, sweep, method, dataset, backbone, lam, lr, metrics, total_steps, "
               "finished_at - started_at AS seconds FROM runs WHERE status = 'done' AND metrics IS NOT NULL")
        params: list[Any] = []
        if sweep is not None:
            sql += " AND sweep = ?"
            params.append(sweep)
        if run_ids is not None:
            sql += " AND id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(run_ids)))
        sql += " ORDER BY method, created_at"
        out = []
        for r in self._read(sql, params, "reading the frontier"):
            metrics = json.loads(r["metrics"])
            if not isinstance(metrics, dict):
                continue
            run = {"run_id": r["id"], "name": r["name"], "sweep": r["sweep"], "method": r["method"],
                   "backbone": r["backbone"], "lr": r["lr"], "total_steps": r["total_steps"], "seconds": r["seconds"]}
            points = metrics.get("points")
            if not isinstance(points, list):
                points = points_from_old_metrics(r["dataset"], r["lam"], metrics)
            out += [run | point for point in points if isinstance(point, dict)]
        # Stable, so runs of one method and λ stay in creation order; no λ (baselines) first.
        out.sort(key=lambda p: (p["method"] or "", p.get("lam") is not None, p.get("lam") or 0.0))
        return out
