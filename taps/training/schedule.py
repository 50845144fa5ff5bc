"""When things happen in a run: stages, the learning-rate schedule, the gate freeze and λ.

A run is one stage, or — for a λ path, the whole frontier from one run — several: stage 0 trains
``epochs`` epochs at the first λ, each later stage ``path_stage_epochs`` more at the next λ,
warm-started from where the previous one ended. Within every stage the same shape repeats:
a cosine learning rate from the full lr to 0, λ ramping from the previous stage's value (0 at
first) to the stage's over the first ``penalty_warmup`` of its steps, and gates that stop
moving after ``gate_freeze`` of its steps, so each stage ends adapted to its final layer choice
— a snapshot worth keeping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the run store reads total_epochs in the dashboard process, which never loads torch
    import torch


@dataclass(frozen=True)
class Stage:
    index: int
    lam: float  # λ this stage ramps to
    lam_from: float  # λ at its start (the previous stage's)
    first_epoch: int
    epochs: int
    start: int  # global steps before the stage
    steps: int

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1

    def local(self, step: int) -> int:
        """Steps done within this stage once global ``step`` is done."""
        return min(max(step - self.start, 0), self.steps)


def total_epochs(epochs: int, lam_path: list[float] | None = None, path_stage_epochs: int = 1) -> int:
    """Epochs a run trains in all: ``epochs``, plus ``path_stage_epochs`` per later λ-path stage."""
    return int(epochs) + (max(len(lam_path) - 1, 0) * int(path_stage_epochs) if lam_path else 0)


def plan_stages(lams: list[float], first_epochs: int, later_epochs: int, steps_per_epoch: int) -> list[Stage]:
    stages, epoch, lam_from = [], 0, 0.0
    for i, lam in enumerate(lams):
        epochs = first_epochs if i == 0 else later_epochs
        stages.append(Stage(i, float(lam), lam_from, epoch, epochs, epoch * steps_per_epoch, epochs * steps_per_epoch))
        epoch, lam_from = epoch + epochs, float(lam)
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage global step ``step`` (from 1; 0 is before any) belongs to."""
    for stage in stages:
        if step <= stage.start + stage.steps:
            return stage
    return stages[-1]


def penalty_ramp(step: int, total_steps: int, warmup: float) -> float:
    """Fraction of λ in force at ``step``: a linear ramp over the first ``warmup`` of training,
    so deltas learn before the penalty can switch their layers off."""
    ramp_steps = warmup * total_steps
    return 1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps)


def lam_at(stages: list[Stage], step: int, warmup: float) -> float:
    stage = stage_at(stages, step)
    return stage.lam_from + (stage.lam - stage.lam_from) * penalty_ramp(stage.local(step), stage.steps, warmup)


def freeze_step(stage: Stage, gate_freeze: float) -> int:
    """The global step after which ``stage``'s gates no longer move."""
    return stage.start + math.ceil(gate_freeze * stage.steps)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, gate_freeze: float,
                    stages: list[Stage] | None = None):
    """Cosine for every group, restarting with each stage; the scores' group gets lr 0 after
    ``gate_freeze`` of each stage, so the end of a stage adapts deltas, norms and head to the
    final layer choice instead of being jolted by late switch-offs."""
    from torch.optim.lr_scheduler import LambdaLR

    stages = stages or [Stage(0, 0.0, 0.0, 0, 0, 0, total_steps)]

    def cosine(done: int) -> float:  # LambdaLR passes the steps done; the lr is for the next one
        stage = stage_at(stages, done + 1)
        return 0.5 * (1 + math.cos(math.pi * min(done - stage.start, stage.steps) / stage.steps))

    def gated_cosine(done: int) -> float:
        return cosine(done) if done < freeze_step(stage_at(stages, done + 1), gate_freeze) else 0.0

    return LambdaLR(
        optimizer, [cosine if g["name"] == "weights" else gated_cosine for g in optimizer.param_groups])
