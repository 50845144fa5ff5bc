"""Reading what older versions of the workbench wrote. Runs finished before the trainer reported
its frontier points (``metrics["points"]``) are read here, once, into the same points: the rest
of the store never guesses how a run trained."""
from __future__ import annotations

from taps.training.points import FrontierPoint, PointKind


def points_from_old_metrics(dataset: str | None, lam: float | None, metrics: dict) -> list[dict]:
    """A finished run's frontier points from metrics that predate ``metrics["points"]``: a joint
    run's per-task metrics, a λ path's stages, a budget run's final λ, else the run itself.
    ``lam``: the run's λ as the store has it (none for a baseline)."""
    per_task, path = metrics.get("tasks"), metrics.get("path")
    if isinstance(per_task, dict) and per_task:
        points = [FrontierPoint.measured(PointKind.JOINT_TASK, task, lam, m) for task, m in per_task.items()]
    elif isinstance(path, list) and path:
        points = [FrontierPoint.measured(PointKind.PATH_STAGE, dataset, p.get("lam"), p, stage=p.get("stage"),
                                         pack=p.get("snapshot")) for p in path]
    elif metrics.get("budget_pct") is not None:
        points = [FrontierPoint.measured(PointKind.BUDGET, dataset, metrics.get("lam_final"), metrics,
                                         budget_pct=metrics["budget_pct"], budget_kind=metrics.get("budget_kind"))]
    else:
        points = [FrontierPoint.measured(PointKind.RUN, dataset, lam, metrics)]
    return [p.to_dict() for p in points]
