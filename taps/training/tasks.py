"""What a run trains: one task, or several at once on one shared base (joint training, Eq. 4).

The training loop treats both alike; a task set gives it

    tasks.model, tasks.names, tasks.steps_per_epoch
    tasks.batches(epoch)          per step, one batch of every task: (task, images, labels)
    tasks.install(task)           the task's own tensors into the shared model, before its batch
    tasks.penalty(lam)            the installed task's sparsity penalty
    tasks.trained_parameters()    (weights, scores) for the optimizer
    tasks.read_scores()           every task's scores, in one device sync
    tasks.epoch_metrics(accuracy) accuracies and costs after an epoch, per task and overall
    tasks.state() / load_state()  the trained tensors a checkpoint keeps
    tasks.save_packs(out, ...)    what the run leaves: task packs (and a joint run's base)

Joint training (paper §3 Eq. 4, §4.2): the shared base weights w̄ train together with every
task's deltas, scores, normalisation and head; the loss is Σ_k (task loss_k + (λ/L)·Σ_i |s_i^k|),
and every step sees ``batch_size`` images of *each* task (the paper's 12 per task). One model
holds the shared layers; each task's parameters live apart and are swapped into the layers before
its part of the step, so gradients of the shared weights add up over the tasks in one optimizer
step. With ``method="finetune"`` the base is fine-tuned with per-task heads and normalisation and
no deltas (the first half of the memory-efficient variant, ``taps.training.joint.train_memory_efficient``).
A joint run writes ``base.safetensors`` (the trained shared weights, loadable with
``create_backbone(..., checkpoint=)``) and ``task-<name>.safetensors`` per task, so
:class:`taps.method.multitask.MultiTaskModel` serves its tasks like incremental ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..method.adaptation import gated_layers, head_name, norm_layers, replace_module
from ..backbones import create_backbone, input_normalization, save_backbone_checkpoint, zero_parameters
from ..data import load_dataset
from ..method.gate import gate_on
from ..method.layers import prime_gates
from .methods import fix_gates, prepare_model
from ..method.packs import NORM_FIELDS, save_pack
from ..method.penalty import SparsityPenalty
from ..method.stats import summarize
from .points import PointKind

if TYPE_CHECKING:
    from .events import EpochEvent
    from .schedule import Stage
    from .train_config import TrainConfig

PACK = "task.safetensors"
BASE = "base.safetensors"


def task_pack_name(task: str) -> str:
    """A joint run's pack of ``task`` (a dataset name or a folder)."""
    return f"task-{task.replace('/', '_')}.safetensors"


def load_task_data(config: TrainConfig, dataset: str):
    """The train/val/test splits of ``dataset`` as ``config`` asks. Images arrive in [0, 1]; the
    backbone's own normalisation is applied on the device, so the data pipeline does not depend
    on which backbone trains on it."""
    return load_dataset(dataset, resolution=config.data.resolution, train_subset=config.data.train_subset,
                        test_subset=config.data.eval_subset, val_fraction=config.data.val_fraction, seed=config.seed,
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), data_root=config.data.data_root,
                        allow_download=config.data.allow_download)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    model = create_backbone(config.backbone, num_classes, config.weights, checkpoint=config.checkpoint)
    return prepare_model(model, config.method, config.taps, freeze_layers=config.sparsity.freeze_layers,
                         freeze_budget_pct=config.sparsity.freeze_budget_pct)


def trained_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """What trains in an adapted model: (weights — deltas, norms, head —, learned scores)."""
    scores = [m.score for _, m in gated_layers(model) if m.score.requires_grad]
    score_ids = {id(p) for p in scores}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids], scores


class TaskSet:
    """What one task and several have in common: data, balanced batches, penalties, evaluation."""

    def __init__(self, config: TrainConfig, device: torch.device, names: list[str], model: nn.Module, data: dict):
        self.config, self.device, self.names, self.model, self.data = config, device, names, model, data
        self.pin = device.type == "cuda"
        # Whole batches only (BatchNorm dislikes a last batch of 1), unless a task is smaller than one.
        self.drop_last = all(len(d.train) >= config.optim.batch_size for d in data.values())
        self.steps_per_epoch = max(len(d.train) // config.optim.batch_size if self.drop_last else 1
                                   for d in data.values())
        self.layers = [m for _, m in gated_layers(model)]  # the same modules throughout: tasks swap tensors
        self.current = names[0]
        self.penalties = dict.fromkeys(names)

    def set_penalty(self, kind: str | None) -> None:
        """Penalise the scores weighted by ``kind`` ("layers" or "params"; None: no penalty). Each
        task's scores are found once here, since the penalty is computed every step."""
        for task in self.names:
            self.install(task)
            self.penalties[task] = SparsityPenalty(self.model, kind) if kind else None
        self.install(self.names[0])

    @property
    def classes(self) -> list[str]:
        return list(self.data[self.names[0]].classes)

    def install(self, task: str) -> None:
        self.current = task

    def penalty(self, lam: float) -> torch.Tensor:
        penalty = self.penalties[self.current]
        return penalty(lam) if penalty is not None else torch.zeros((), device=self.device)

    def batches(self, epoch: int):
        """For each step of ``epoch``, the step's batches: a (task, images, labels) per task,
        drawn as the step asks for them. A smaller task starts over within the epoch, so every
        step has a batch of every task. Shuffling is seeded per epoch, so a resumed run draws
        the batches an uninterrupted one draws."""
        def loader(task: str) -> DataLoader:
            return DataLoader(self.data[task].train, batch_size=self.config.optim.batch_size, shuffle=True,
                              drop_last=self.drop_last, num_workers=self.config.data.num_workers, pin_memory=self.pin,
                              generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch))

        def cycle(task: str):
            while True:
                yield from loader(task)

        cycles = {task: cycle(task) for task in self.names}
        for _ in range(self.steps_per_epoch):
            yield ((task, *next(cycles[task])) for task in self.names)

    def score_parameters(self) -> list[nn.Parameter]:
        return [layer.score for layer in self.layers]

    def read_scores(self) -> list[float]:
        """Every task's scores, task after task (one device sync)."""
        return torch.stack([s.detach() for s in self.score_parameters()]).tolist()

    def prime_gates(self, scores: list[float]) -> None:
        """Nothing by default: a task set that swaps tensors would invalidate a primed gate."""

    def active_layers(self, scores: list[float]) -> int:
        return sum(gate_on(s, self.layers[j % len(self.layers)].threshold) for j, s in enumerate(scores))

    def epoch_metrics(self, accuracy: Callable[[object], float]) -> dict:
        """Each task's validation and test accuracy (``accuracy(split)``) and costs; overall, the
        means of accuracies and percentages and the sum of active layers (EpochEvent's fields)."""
        per_task = {}
        for task in self.names:
            self.install(task)
            per_task[task] = {"val_acc": accuracy(self.data[task].val), "test_acc": accuracy(self.data[task].test),
                              **summarize(self.model).to_dict()}
        self.install(self.names[0])
        mean_of = lambda key: sum(m[key] for m in per_task.values()) / len(per_task)
        return {"val_acc": mean_of("val_acc"), "test_acc": mean_of("test_acc"),
                "task_specific_layers_pct": mean_of("task_specific_layers_pct"),
                "additional_params_pct": mean_of("additional_params_pct"),
                "active_layers": sum(m["active_layers"] for m in per_task.values()),
                "tasks": per_task if len(self.names) > 1 else None}

    def pack_extra(self, task: str) -> dict:
        """What a task pack records about how it was trained, to be evaluated the same way later."""
        mean, std = input_normalization(self.model)
        return {"method": self.config.method, "dataset": task, "resolution": self.config.data.resolution,
                "mean": list(mean), "std": list(std)}

    def save_stage_pack(self, out: Path, stage: Stage, record: EpochEvent) -> str:
        raise NotImplementedError("a λ path trains one task")


class OneTask(TaskSet):
    """The usual run: one dataset, its deltas, scores, norms and head in the model itself."""

    def __init__(self, config: TrainConfig, device: torch.device, channels_last: bool):
        data = load_task_data(config, config.data.dataset)
        model = build_model(config, len(data.classes)).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        super().__init__(config, device, [config.data.dataset], model, {config.data.dataset: data})

    def trained_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return trained_parameters(self.model)

    def prime_gates(self, scores: list[float]) -> None:
        prime_gates(self.layers, scores)  # the next forward pass reads no score

    def state(self) -> dict[str, torch.Tensor]:
        """Everything trainable plus buffers (the frozen base is rebuilt from the settings)."""
        params = dict(self.model.named_parameters())
        keep = {n for n, p in params.items() if p.requires_grad} | {f"{n}.score" for n, _ in gated_layers(self.model)}
        return {k: v for k, v in self.model.state_dict().items() if k in keep or k not in params}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=False)  # the frozen base is not in it

    def final_metrics(self, final: dict) -> dict:
        return {"val_acc": final.get("val_acc"), "test_acc": final.get("test_acc"),
                "train_acc": final.get("train_acc"), **summarize(self.model).to_dict()}

    point_kind = PointKind.RUN

    def task_metrics(self, metrics: dict) -> dict[str, dict]:
        """Each task's final numbers (the frontier's points)."""
        return {self.names[0]: metrics}

    def save_packs(self, out: Path, lam: float, metrics: dict) -> dict:
        path = save_pack(self.model, out / PACK, class_names=self.classes, lam=lam, metrics=metrics,
                         extra=self.pack_extra(self.names[0]))
        return {"pack_path": str(path)}

    def save_stage_pack(self, out: Path, stage: Stage, record: EpochEvent) -> str:
        """The task as a stage of a λ path ends: one frontier point."""
        metrics = {"val_acc": record.val_acc, "test_acc": record.test_acc} | summarize(self.model).to_dict()
        return str(save_pack(self.model, out / f"stage-{stage.index}.safetensors", class_names=self.classes,
                             lam=stage.lam, metrics=metrics, extra=self.pack_extra(self.names[0])))


class TaskState(nn.Module):
    """Everything one task of a joint run owns: a delta and a score per gated layer, its
    normalisation layers' parameters and statistics, its head."""

    def __init__(self, model: nn.Module, num_classes: int, trains_deltas: bool):
        super().__init__()
        self.deltas = nn.ParameterList()
        self.scores = nn.ParameterList()
        for _, layer in gated_layers(model):
            self.deltas.append(nn.Parameter(torch.zeros_like(layer.delta), requires_grad=trains_deltas))
            self.scores.append(nn.Parameter(layer.score.detach().clone(), requires_grad=layer.score.requires_grad))
        self.norm_params = nn.ParameterList()
        self.norm_buffers: list[list[str]] = []  # per norm layer, its statistics' fields
        for i, (_, norm) in enumerate(norm_layers(model)):
            for f in ("weight", "bias"):
                p = getattr(norm, f, None)
                if p is not None:
                    self.norm_params.append(nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
            fields = [f for f in NORM_FIELDS[2:] if getattr(norm, f, None) is not None]
            for f in fields:  # buffers of this module: they move with it and are in its state_dict
                self.register_buffer(f"norm{i}_{f}", getattr(norm, f).detach().clone())
            self.norm_buffers.append(fields)
        head = model.get_submodule(head_name(model))
        self.head = nn.Linear(head.in_features, num_classes, bias=head.bias is not None,
                              device=head.weight.device, dtype=head.weight.dtype)
        zero_parameters(self.head)  # a new head starts at zero, as create_backbone's do

    def install(self, model: nn.Module, head: str) -> None:
        """Put this task's tensors into the model's layers (references: nothing is copied)."""
        for (_, layer), delta, score in zip(gated_layers(model), self.deltas, self.scores):
            layer.delta, layer.score = delta, score
        params = iter(self.norm_params)
        for i, ((_, norm), fields) in enumerate(zip(norm_layers(model), self.norm_buffers)):
            for f in ("weight", "bias"):
                if getattr(norm, f, None) is not None:
                    setattr(norm, f, next(params))
            for f in fields:
                setattr(norm, f, getattr(self, f"norm{i}_{f}"))
        replace_module(model, head, self.head)


class JointTasks(TaskSet):
    """Several tasks on one trained base (Eq. 4): see the module docstring."""

    def __init__(self, config: TrainConfig, device: torch.device, channels_last: bool):
        data = {task: load_task_data(config, task) for task in config.data.tasks}
        first = data[config.data.tasks[0]]
        model = build_model(config.updated(method="taps", tasks=[]), len(first.classes)).to(device)
        if channels_last:  # before the task states are made, so their deltas take the layout too
            model = model.to(memory_format=torch.channels_last)
        if config.method == "finetune":
            fix_gates(model, set())  # no deltas: the shared weights themselves adapt
        for layer in (m for _, m in gated_layers(model)):  # Eq. 4: the base w̄ is shared *and* trained
            layer.weight.requires_grad_(True)
            if layer.bias is not None:
                layer.bias.requires_grad_(True)
        self.head = head_name(model)
        # Each task has its own normalisation: the base keeps the pretrained one.
        self.pretrained_norms = {f"{n}.{k}": v.detach().clone() for n, norm in norm_layers(model)
                                 for k, v in norm.state_dict().items()}
        self.states = {t: TaskState(model, len(data[t].classes), config.method == "taps") for t in config.data.tasks}
        super().__init__(config, device, list(config.data.tasks), model, data)

    def install(self, task: str) -> None:
        self.states[task].install(self.model, self.head)
        self.current = task

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]

    def trained_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        task_weights = [p for s in self.states.values() for p in [*s.deltas, *s.norm_params, *s.head.parameters()]
                        if p.requires_grad]
        return self.shared_parameters() + task_weights, [p for p in self.score_parameters() if p.requires_grad]

    def score_parameters(self) -> list[nn.Parameter]:
        return [p for t in self.names for p in self.states[t].scores]

    def state(self) -> dict[str, torch.Tensor]:
        """The shared weights and every task's own tensors."""
        shared = {f"shared.{n}.{f}": getattr(layer, f).detach() for n, layer in gated_layers(self.model)
                  for f in ("weight", "bias") if getattr(layer, f) is not None}
        return shared | {f"task.{t}.{k}": v for t, s in self.states.items() for k, v in s.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        mine = self.state()
        with torch.no_grad():  # in place: the optimizer and the model hold these very tensors
            for key, value in state.items():
                mine[key].copy_(value)

    def final_metrics(self, final: dict) -> dict:
        """Means over tasks for accuracies and percentages, sums for counts; each task's own
        under "tasks"."""
        per_task = final.get("tasks") or {}
        metrics = {k: final.get(k) for k in ("val_acc", "test_acc", "train_acc", "task_specific_layers_pct",
                                            "additional_params_pct")}
        metrics.update({k: sum(m[k] for m in per_task.values()) for k in (
            "gated_layers", "active_layers", "delta_params", "norm_params", "head_params", "additional_params")})
        metrics["base_params"] = next((m["base_params"] for m in per_task.values()), None)
        return metrics | {"tasks": per_task}

    point_kind = PointKind.JOINT_TASK

    def task_metrics(self, metrics: dict) -> dict[str, dict]:
        return metrics["tasks"]

    def pack_extra(self, task: str) -> dict:
        return super().pack_extra(task) | {"method": f"{self.config.method}_joint", "base": BASE,
                                           "tasks": list(self.names)}

    def save_packs(self, out: Path, lam: float, metrics: dict) -> dict:
        """The trained base (the pretrained normalisation, no head, no TAPS tensors) and one pack
        per task."""
        base = {}
        for key, value in self.model.state_dict().items():
            if key.endswith((".delta", ".score")) or key == self.head or key.startswith(self.head + "."):
                continue
            base[key] = self.pretrained_norms.get(key, value).detach().cpu().contiguous()
        save_backbone_checkpoint(base, out / BASE, like=self.model)
        packs = {}
        for task in self.names:
            self.install(task)
            packs[task] = str(save_pack(self.model, out / task_pack_name(task), class_names=list(
                self.data[task].classes), lam=lam, metrics=metrics["tasks"].get(task, {}), extra=self.pack_extra(task)))
        self.install(self.names[0])
        return {"task_packs": packs, "base_path": str(out / BASE)}
