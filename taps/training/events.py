"""What a training run tells the world: one event when it starts, one per step, one per epoch,
and its result at the end. The CLI, the workbench and the tests listen to the same events
(callbacks with ``on_start``, ``on_step``, ``on_epoch``, and ``on_checkpoint`` with the path of
each checkpoint once it is written, for a listener that copies it elsewhere); the training loop
never knows who listens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class StepEvent:
    step: int  # global step, from 1
    total_steps: int
    epoch: int  # from 0
    loss: float
    task_loss: float
    penalty: float
    lam_now: float  # λ after the warm-up ramp (the controller's, in budget mode)
    lr: float
    scores: list[float]  # L per task: K·L in joint training, task after task
    active_layers: int
    images_per_sec: float
    task_losses: list[float] | None = None  # joint training: each task's loss, in config.tasks order


@dataclass
class EpochEvent:
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    val_acc: float
    test_acc: float
    task_specific_layers_pct: float
    additional_params_pct: float
    active_layers: int
    seconds: float
    tasks: dict | None = None  # joint training: each task's accuracies and costs
    stage: int | None = None  # λ path: the stage this epoch belongs to
    lam: float | None = None  # the λ in force at the epoch's end (the controller's, in budget mode)
    snapshot: str | None = None  # λ path: the task pack saved at the end of a stage
    warning: str | None = None  # something the user should know, e.g. a loss still at chance


@dataclass
class StartEvent:
    config: dict
    device: str
    layer_names: list[str]
    layer_kinds: list[str]
    layer_params: list[int]
    classes: list[str]
    train_size: int
    val_size: int
    test_size: int
    total_steps: int
    start_epoch: int
    tasks: list[str] = field(default_factory=list)
    total_epochs: int = 0  # all stages of a λ path
    steps_per_epoch: int = 0


@dataclass
class TrainResult:
    status: str  # done | cancelled
    epochs_done: int
    metrics: dict
    layer_report: list[dict]
    pack_path: str | None
    history: list[dict]
    task_packs: dict[str, str] = field(default_factory=dict)  # joint training: one pack per task
    base_path: str | None = None  # joint training: the trained shared base
    stage_packs: list[str] = field(default_factory=list)  # λ path: one pack per stage, in λ order


class Callback(Protocol):
    def on_start(self, event: StartEvent) -> None: ...
    def on_step(self, event: StepEvent) -> None: ...
    def on_epoch(self, event: EpochEvent) -> None: ...
    def on_checkpoint(self, path: Path) -> None: ...


def emit(callbacks, hook: str, event) -> None:
    """Give ``event`` to every callback that has ``hook`` (a listener may want only some events)."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(event)
