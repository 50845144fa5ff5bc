"""What the app and the notebooks show about runs, as plain data read from the run store.

No Streamlit and no torch here: a page (or a notebook cell) calls these and draws the result
with :mod:`workbench.figures`, so both show the same numbers.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from taps.errors import ConfigError
from taps.method.gate import gate_on
from taps.training.points import PointKind
from taps.training.train_config import TrainConfig

from .store import TERMINAL, RunReader

__all__ = [
    "run_rows", "RunProgress", "run_progress", "final_scores", "layer_patterns", "layer_report_rows", "task_scores",
    "planned_steps", "comparable_run", "measured_run_timing", "RunEstimate", "estimate_run", "sweep_seconds",
    "pack_rows", "format_duration", "run_label", "run_settings", "run_to_follow", "plural",
]

BYTES_PER_PARAM = 4  # float32 checkpoints


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_label(run: dict) -> str:
    """A short human name: the run's name, else method and λ."""
    if run.get("name"):
        return run["name"]
    method = run.get("method") or "run"
    settings = run_settings(run)
    sparsity = settings.sparsity
    if run.get("tasks") or settings.data.tasks:
        method = f"joint {method}"
    if sparsity.budget_pct is not None:
        return f"{method} budget ≤{sparsity.budget_pct:g}% {sparsity.budget_kind}"
    if sparsity.lam_path:
        return f"{method} λ path {sparsity.lam_path[0]:g}→{sparsity.lam_path[-1]:g}"
    lam = run.get("lam")
    return f"{method} λ={lam:g}" if method.endswith("taps") and lam is not None else method


def run_settings(run: dict) -> TrainConfig:
    """A run's settings, typed; the defaults where its stored config cannot be read."""
    try:
        return TrainConfig.from_dict(run.get("config") or {})
    except (ConfigError, TypeError, ValueError):
        return TrainConfig()


def plural(n: int, word: str) -> str:
    """'1 run', '4 runs'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_to_follow(active: Sequence[dict], launched: Sequence[str]) -> str:
    """The run to show after launching ``launched``: the one of them that trains; else, when they
    wait in the queue, the run training now (what the machine is busy with); else the first
    launched, which the queue starts first. ``active`` are the store's queued and running runs."""
    running = [r["id"] for r in active if r.get("status") == "running"]
    return next((i for i in launched if i in running), running[0] if running else launched[0])


def _progress_fraction(run: dict) -> float:
    if run.get("status") == "done":
        return 1.0
    total = run.get("total_steps") or 0
    return min(1.0, (run.get("last_step") or 0) / total) if total else 0.0


def run_rows(runs: Iterable[dict]) -> list[dict]:
    """One flat row per run for a table: what a user scans a list of runs for."""
    rows = []
    for r in runs:
        m = r.get("metrics") or {}
        rows.append({
            "id": r["id"], "name": run_label(r), "status": r["status"], "progress": _progress_fraction(r),
            "method": r.get("method"), "dataset": r.get("dataset"), "backbone": r.get("backbone"),
            "λ": r.get("lam"), "lr": r.get("lr"),
            "test acc": m.get("test_acc"), "% task-specific layers": m.get("task_specific_layers_pct"),
            "% additional params": m.get("additional_params_pct"), "sweep": r.get("sweep"),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
            "error": r.get("error"),
        })
    return rows


@dataclass
class RunProgress:
    fraction: float  # 0..1 of the training steps
    step: int
    total_steps: int | None
    eta_s: float | None  # seconds left, None when unknown
    elapsed_s: float | None
    text: str


def run_progress(run: dict, recent_steps: Sequence[dict] = (), epochs: Sequence[dict] = (),
                 now: float | None = None) -> RunProgress:
    """Where a run is and, while it trains, when it should end. The rate comes from the finished
    epochs (evaluation included) when there are any, else from the recent steps' timestamps."""
    now = time.time() if now is None else now
    step, total = run.get("last_step") or 0, run.get("total_steps")
    fraction = _progress_fraction(run)
    started, finished = run.get("started_at"), run.get("finished_at")
    elapsed = ((finished or now) - started) if started else None
    eta = None
    if run.get("status") == "running" and total:
        left = max(0, total - step)
        per_step = None
        done_steps = total / max(1, run.get("epochs") or 1) * len(epochs)
        if epochs and done_steps:
            per_step = sum(e.get("seconds") or 0 for e in epochs) / done_steps
        elif len(recent_steps) >= 2:
            t0, t1 = recent_steps[0].get("t"), recent_steps[-1].get("t")
            n = recent_steps[-1]["step"] - recent_steps[0]["step"]
            if t0 and t1 and t1 > t0 and n > 0:
                per_step = (t1 - t0) / n
        eta = left * per_step if per_step is not None else None
    status = run.get("status")
    if status == "running":
        text = f"step {step} / {total or '?'}"
        if eta is not None:
            text += f" · about {format_duration(eta)} left"
    elif status == "queued":
        text = "queued: starts when a slot is free"
    else:
        text = f"{status} after {format_duration(elapsed)}" if elapsed is not None else str(status)
    return RunProgress(fraction, step, total, eta, elapsed, text)


def final_scores(runs: RunReader, run_id: str) -> list[float] | None:
    """The run's gate scores at its last recorded step (None before the first step)."""
    _, matrix = runs.scores_matrix(run_id, limit=1)
    return matrix[-1] if matrix else None


def _threshold(run: dict) -> float:
    return float(run_settings(run).taps.threshold)


def task_scores(run: dict, scores: Sequence[float]) -> list[tuple[str | None, list[float]]]:
    """(task, its L scores) for each task of a run: a joint run records its K tasks' scores one
    after the other in each step; any other run has one task (None)."""
    tasks = run.get("tasks") or [None]
    n = len(run.get("layer_names") or []) or len(scores)
    return [(t, list(scores[k * n:(k + 1) * n])) for k, t in enumerate(tasks)]


def layer_report_rows(run: dict, scores: Sequence[float] | None) -> list[dict]:
    """The final per-layer report of a run from the store: index, name, type, parameters, score,
    task-specific or shared (one block of rows per task for a joint run)."""
    if not scores or not run.get("layer_names"):
        return []
    tau = _threshold(run)
    names = run["layer_names"]
    kinds = run.get("layer_kinds") or [""] * len(names)
    params = run.get("layer_params") or [None] * len(names)
    return [{**({"task": task} if task else {}), "layer": i, "name": name, "type": kind, "parameters": p,
             "score": round(s, 4), "task-specific": gate_on(s, tau)}
            for task, block in task_scores(run, scores)
            for i, (name, kind, p, s) in enumerate(zip(names, kinds, params, block))]


def layer_patterns(reader: RunReader, runs: Sequence[dict]) -> tuple[list[dict], list[str], list[str], float]:
    """Rows for :func:`workbench.figures.layer_patterns_figure` from runs of one backbone:
    (rows, layer_names, layer_kinds, threshold). Runs without recorded scores are left out;
    runs with another layer list than the first are refused (a ValueError says which)."""
    rows, names, kinds, tau = [], None, None, 0.1
    seen: dict[str, int] = {}
    for run in runs:
        scores = final_scores(reader, run["id"])
        if scores is None or not run.get("layer_names"):
            continue
        if names is None:
            names, kinds, tau = run["layer_names"], run.get("layer_kinds") or [], _threshold(run)
        elif run["layer_names"] != names:
            raise ValueError(f"run {run['id']} ({run.get('backbone')}) has other layers than the first run; "
                             "compare runs of one backbone")
        metrics = run.get("metrics") or {}
        for task, block in task_scores(run, scores):
            label = run_label(run) + (f" · {task}" if task else "")
            acc = ((metrics.get("tasks") or {}).get(task) or {}).get("test_acc") if task else metrics.get("test_acc")
            if acc is not None:
                label += f" · {acc:.3f}"
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:  # rows of a heatmap are keyed by label: keep them apart
                label += f" ({run['id'][-4:]})"
            rows.append({"run_id": run["id"], "label": label, "scores": block})
    return rows, names or [], kinds or [], tau


def planned_steps(train_images: int, batch_size: int, epochs: int) -> int:
    """Training steps of a run, as the trainer counts them: full batches only (one step an epoch
    when there are fewer images than a batch)."""
    per_epoch = train_images // batch_size if train_images >= batch_size else 1
    return per_epoch * epochs


def comparable_run(run: dict, settings: dict, host: str) -> bool:
    """A finished run on this host whose steps cost what those of ``settings`` (flat, as a form
    holds them) will: same backbone, method, resolution, batch size, device request and number
    of tasks."""
    past = run_settings(run).to_flat()
    same = ("backbone", "method", "resolution", "batch_size", "device")
    return (run.get("status") == "done" and run.get("host") == host
            and all(past[k] == settings.get(k) for k in same)
            and len(past["tasks"]) == len(settings.get("tasks") or []))


def measured_run_timing(run: dict, steps: Sequence[dict], epochs: Sequence[dict]) -> dict | None:
    """What a finished run measured: its median step (the time between consecutive steps of one
    epoch: the step after an evaluation is left out) and its start-up and wrap-up (wall time less
    its epochs, evaluation included). None when it has too few steps to say."""
    gaps = [b["t"] - a["t"] for a, b in zip(steps, steps[1:])
            if a.get("t") and b.get("t") and a.get("epoch") == b.get("epoch") and b["step"] == a["step"] + 1]
    if not gaps:
        return None
    startup = None
    if run.get("started_at") and run.get("finished_at") and epochs:
        startup = max(0.0, run["finished_at"] - run["started_at"] - sum(e.get("seconds") or 0 for e in epochs))
    return {"step_s": statistics.median(gaps), "startup_s": startup}


@dataclass
class RunEstimate:
    seconds: float  # training and evaluation, plus start-up when a past run measured it
    steps: int
    step_s: float
    includes_startup: bool
    from_past_run: bool  # the step time is a finished run's own, not the probe's


def estimate_run(*, steps: int, epochs: int, eval_images: int, step_s: float, eval_image_s: float,
                 tasks: int = 1, past: dict | None = None) -> RunEstimate:
    """A run's wall time from this machine's timings: ``steps`` training steps at ``step_s`` (the
    probe's) and, every epoch, ``eval_images`` validation and as many test images at
    ``eval_image_s``, for each of ``tasks`` (a joint step trains a batch of every task). A finished
    run like it (:func:`measured_run_timing`) replaces the probe's step, which leaves out data
    loading, with its own, and adds its start-up."""
    per_step = past["step_s"] if past else step_s * tasks
    startup = (past or {}).get("startup_s")
    seconds = steps * per_step + epochs * 2 * eval_images * tasks * eval_image_s + (startup or 0.0)
    return RunEstimate(seconds, steps, per_step, startup is not None, past is not None)


def sweep_seconds(per_run_s: float, runs: int, at_once: int) -> float:
    """Wall time of ``runs`` runs of ``per_run_s`` each, ``at_once`` of them training together
    (the launcher's max_concurrent): runs × per run / concurrency."""
    return runs * per_run_s / max(1, min(at_once, runs))


def pack_rows(reader: RunReader, runs: Iterable[dict]) -> list[dict]:
    """Task packs of finished runs that are still on disk, with their size against a full
    fine-tuned float32 copy of the model."""
    rows = []
    for run in runs:
        if run.get("status") not in TERMINAL:
            continue
        for art in reader.artifacts(run["id"], kind="pack"):
            path = Path(art["path"])
            if not path.is_file():
                continue
            m = run.get("metrics") or {}
            dataset = run.get("dataset")
            if run.get("tasks") and path.name.startswith("task-"):  # a joint run: one pack per task
                dataset = path.name[len("task-"):].split(".safetensors")[0]
                m = (m.get("tasks") or {}).get(dataset, {})
            size = path.stat().st_size
            full = ((m.get("base_params") or 0) + (m.get("head_params") or 0)) * BYTES_PER_PARAM or None
            rows.append({"run_id": run["id"], "name": run_label(run), "dataset": dataset,
                         "backbone": run.get("backbone"), "method": run.get("method"),
                         "λ": run.get("lam"),
                         "test acc": m.get("test_acc"), "layers": m.get("active_layers"),
                         "pack bytes": size, "full model bytes": full,
                         "% of full": 100 * size / full if full else None, "path": str(path),
                         "base params": m.get("base_params")})
    return rows


COMPUTE_KINDS = {PointKind.RUN: "λ sweep", PointKind.PATH_STAGE: "λ path", PointKind.BUDGET: "budget runs"}


def compute_caption(points: list[dict], *, sweep: bool = True) -> str:
    """What each way of drawing the TAPS frontier cost: runs, steps and wall time, counting a run
    once however many points it gives (a λ path gives one per stage). ``sweep``: the points are
    one sweep's; hand-picked TAPS runs are "TAPS runs", not a sweep."""
    parts = []
    for point_kind, kind in COMPUTE_KINDS.items():
        kind = kind if sweep or point_kind != PointKind.RUN else "TAPS runs"
        mine = [p for p in points if p.get("kind", PointKind.RUN) == point_kind and p.get("method") == "taps"]
        runs = {p["run_id"]: p for p in mine}
        if not runs:
            continue
        steps = sum(p.get("total_steps") or 0 for p in runs.values())
        seconds = sum(p.get("seconds") or 0 for p in runs.values())
        points_n = len(mine)
        parts.append(f"{kind}: {points_n} point{'s' * (points_n != 1)} from {len(runs)} run{'s' * (len(runs) != 1)}, "
                     f"{steps:,} steps, {format_duration(seconds)}")
    return "Compute — " + " · ".join(parts) if parts else ""
