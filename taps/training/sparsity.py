"""How much sparsity a run asks for, step by step: a fixed λ, a λ path, or a budget.

The training loop is the same for all three; it asks its schedule only this:

    schedule.stages, total_steps, total_epochs   the stages the learning rate restarts and the
                                                 gates freeze by (one, but for a λ path)
    schedule.penalty_kind        what the penalty weighs: "layers", "params", or None (no penalty)
    schedule.lam_at(step)        λ for this step's penalty
    schedule.after_step(...)     what happens to the gates after the optimizer step
    schedule.epoch_fields(e)     the stage and λ an epoch event records
    schedule.frontier_stage(e)   a stage ending with epoch e, whose task pack is a frontier point
    schedule.state_dict()        what a checkpoint keeps of it, to resume exactly
    schedule.final_lam           the λ in force at the end, which the task packs record
    schedule.final_metrics(h)    what the run's metrics add: the λ actually used, and more

``FixedLam`` is the plain run (and the baselines', which have no penalty); ``LamPath`` and
``Budget`` change what differs. See ``taps.training.schedule`` for stages and ``taps.training.budget`` for the
controller.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import nn

from .budget import BudgetController, LayerCosts, project_to_budget
from ..errors import ConfigError
from .points import FrontierPoint, PointKind
from .schedule import Stage, freeze_step, lam_at, plan_stages, stage_at

if TYPE_CHECKING:
    from .train_config import TrainConfig

# What each stage of a λ path records in the run's metrics: one frontier point each.
PATH_POINT_FIELDS = ("stage", "lam", "val_acc", "test_acc", "task_specific_layers_pct", "additional_params_pct",
                     "active_layers")


class FixedLam:
    """One λ, ramped in from 0 over the first ``penalty_warmup`` of the steps."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, lams: list[float] | None = None):
        s = config.sparsity
        self.stages = plan_stages(lams or [s.lam], config.optim.epochs, s.path_stage_epochs, steps_per_epoch)
        self.steps_per_epoch, self.warmup = steps_per_epoch, s.penalty_warmup
        # What the penalty weighs (each layer alike, or by its parameters); None: the method has none.
        self.penalty_kind = config.taps.penalty_mode if config.method == "taps" else None

    @property
    def total_epochs(self) -> int:
        return self.stages[-1].last_epoch + 1

    @property
    def total_steps(self) -> int:
        return self.stages[-1].start + self.stages[-1].steps

    def lam_at(self, step: int) -> float:
        return lam_at(self.stages, step, self.warmup)

    def after_step(self, step: int, scores: list[float]) -> None:
        """Nothing: with a fixed λ the gates move by their gradients alone."""

    def stage_of(self, epoch: int) -> Stage:
        return stage_at(self.stages, (epoch + 1) * self.steps_per_epoch)

    def epoch_fields(self, epoch: int) -> dict:
        return {"stage": None, "lam": self.stage_of(epoch).lam}

    def frontier_stage(self, epoch: int) -> Stage | None:
        return None

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass

    @property
    def final_lam(self) -> float:
        """The λ in force at the end: the one a task pack records."""
        return self.stages[-1].lam

    def final_metrics(self, history: list[dict]) -> dict:
        return {"lam": self.final_lam if self.penalty_kind else None}

    def points(self, per_task: dict[str, dict], kind: PointKind, history: list[dict]) -> list[FrontierPoint]:
        """The frontier points of the finished run: one per task, at the λ in force at the end
        (none for a method without a penalty)."""
        lam = self.final_lam if self.penalty_kind else None
        return [FrontierPoint.measured(kind, task, lam, metrics) for task, metrics in per_task.items()]


class LamPath(FixedLam):
    """The frontier from one run: each stage warm-starts from the last at the next λ, and each
    stage's end is a frontier point (its task pack, ``stage-<k>.safetensors``)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        super().__init__(config, steps_per_epoch, lams=config.sparsity.lam_path)

    def epoch_fields(self, epoch: int) -> dict:
        stage = self.stage_of(epoch)
        return {"stage": stage.index, "lam": stage.lam}

    def frontier_stage(self, epoch: int) -> Stage | None:
        stage = self.stage_of(epoch)
        return stage if epoch == stage.last_epoch else None

    def final_metrics(self, history: list[dict]) -> dict:
        points = [{k: h[k] for k in (*PATH_POINT_FIELDS, "snapshot")} for h in history if h.get("snapshot")]
        return super().final_metrics(history) | {"path": points}

    def points(self, per_task: dict[str, dict], kind: PointKind, history: list[dict]) -> list[FrontierPoint]:
        """A point per stage, as each stage ended (its own task pack)."""
        (task,) = per_task
        return [FrontierPoint.measured(PointKind.PATH_STAGE, task, h["lam"], h, stage=h["stage"], pack=h["snapshot"])
                for h in history if h.get("snapshot")]


class Budget(FixedLam):
    """λ found during training so the run ends within ``budget_pct`` (see ``taps.training.budget``):
    the penalty is the budget's Lagrangian term, weighted by what the budget counts, and λ its
    multiplier, which starts at 0 (no warm-up needed)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, model: nn.Module, num_classes: int):
        super().__init__(config, steps_per_epoch)
        check_budget_reachable(config, model, num_classes)
        s = config.sparsity
        self.penalty_kind, self.pct, self.kind = s.budget_kind, s.budget_pct, s.budget_kind
        self.freeze_at = freeze_step(self.stages[0], s.gate_freeze)
        costs = LayerCosts(model, s.budget_kind)
        # The target reaches the budget two thirds of the way to the gate freeze, so the last third
        # settles λ and trains the layers that stay. It starts at the cost of the initial gates
        # (from the config, so a resumed run anneals the same way).
        self.controller = BudgetController(
            costs, s.budget_pct, s.budget_gain, anneal_steps=round(2 / 3 * self.freeze_at),
            start_pct=costs.cost_pct(costs.active([config.taps.score_init] * len(costs.layers))))

    def lam_at(self, step: int) -> float:
        return self.controller.lam

    def after_step(self, step: int, scores: list[float]) -> None:
        """While the gates learn, λ follows the measured cost against the annealed target, and
        the target caps the gates: active layers beyond it, lowest score first, are switched
        off — gradual pruning that cannot overshoot in a cascade, since scores bunched near τ
        cross together when λ alone pushes them. At the freeze the gates are projected onto the
        budget (the highest scores that fit stay on), so the run ends at its budget."""
        budget = self.controller
        if step < self.freeze_at:
            budget.update(scores, step)
            project_to_budget(budget.costs, budget.target_at(step), switch_on=False)
        elif step == max(self.freeze_at, 1):
            project_to_budget(budget.costs, budget.target)

    def epoch_fields(self, epoch: int) -> dict:
        return {"stage": None, "lam": self.controller.lam}

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.controller.lam}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.controller.lam = float(state["lam"])

    @property
    def final_lam(self) -> float:
        return self.controller.lam

    def final_metrics(self, history: list[dict]) -> dict:
        return {"lam": self.final_lam, "budget_pct": self.pct, "budget_kind": self.kind, "lam_final": self.final_lam}

    def points(self, per_task: dict[str, dict], kind: PointKind, history: list[dict]) -> list[FrontierPoint]:
        """One point, at the λ the controller ended with (not the config's, which it never used)."""
        return [FrontierPoint.measured(PointKind.BUDGET, task, self.final_lam, metrics, budget_pct=self.pct,
                                       budget_kind=self.kind) for task, metrics in per_task.items()]


def sparsity_schedule(config: TrainConfig, steps_per_epoch: int, model: nn.Module, num_classes: int) -> FixedLam:
    """The schedule ``config`` asks for; ``model`` and ``num_classes`` price a budget."""
    if config.sparsity.budget_pct is not None:
        return Budget(config, steps_per_epoch, model, num_classes)
    if config.sparsity.lam_path:
        return LamPath(config, steps_per_epoch)
    return FixedLam(config, steps_per_epoch)


def check_budget_reachable(config: TrainConfig, model: nn.Module, num_classes: int) -> None:
    """Refuse a budget below what every task of this model costs (norms and head, for a parameter
    budget): λ would rise without bound and the run could not end within it."""
    s = config.sparsity
    if s.budget_pct is None:
        return
    floor = LayerCosts(model, s.budget_kind).floor_pct()
    if s.budget_pct < floor:
        least = math.ceil(floor * 100) / 100  # the smallest budget, in hundredths, that can be met
        raise ConfigError(f"budget_pct must be ≥ {least} for a {s.budget_kind} budget, got {s.budget_pct}: "
                          f"norms and head of {config.backbone} with {num_classes} classes already cost {floor:.3f} %")
