"""What a run is, and what it adds to the accuracy-vs-sharing frontier: one point per task pack it
leaves, with its kind and the λ it actually used. The engine makes the points as it finishes; the
run store keeps them as told; figures draw them by kind. Torch-free: the dashboard imports it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class RunKind(str, Enum):
    """How a run trains: what differs is its task set and its sparsity schedule."""

    SINGLE = "single"  # one task at one λ (or a baseline, which has no λ)
    JOINT = "joint"  # several tasks on one base at once (Eq. 4)
    PATH = "path"  # one task through increasing λ, a task pack per stage
    BUDGET = "budget"  # one task, λ found during training to meet a budget

    def __str__(self) -> str:
        return self.value


class PointKind(str, Enum):
    """Where a frontier point comes from."""

    RUN = "run"  # a single-task run's one pack
    PATH_STAGE = "path_stage"  # the end of one stage of a λ path
    BUDGET = "budget"  # a budget run's pack, at the λ the controller ended with
    JOINT_TASK = "joint_task"  # one task of a joint run

    def __str__(self) -> str:
        return self.value


POINT_METRICS = ("val_acc", "test_acc", "task_specific_layers_pct", "additional_params_pct", "active_layers")


@dataclass
class FrontierPoint:
    kind: PointKind
    dataset: str
    lam: float | None  # the λ in force when the pack was saved; None: the method has no penalty
    val_acc: float | None = None
    test_acc: float | None = None
    task_specific_layers_pct: float | None = None
    additional_params_pct: float | None = None
    active_layers: int | None = None
    stage: int | None = None  # λ path: the stage's index
    budget_pct: float | None = None
    budget_kind: str | None = None
    pack: str | None = None  # the point's own task pack, when it is not the run's final one

    @classmethod
    def measured(cls, kind: PointKind, dataset: str, lam: float | None, metrics: dict, **extra) -> "FrontierPoint":
        """A point with its numbers read from ``metrics`` (an epoch's or a run's final ones)."""
        return cls(kind, dataset, lam, **{k: metrics.get(k) for k in POINT_METRICS}, **extra)

    def to_dict(self) -> dict:
        return asdict(self) | {"kind": self.kind.value}
