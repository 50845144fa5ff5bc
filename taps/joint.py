"""Joint multi-task TAPS (paper §3 Eq. 4, §4.2): one base trained for K tasks at once.

    result = train(TrainConfig(tasks=["fashion-mnist", "digits"], lam=0.5, out_dir="runs/joint"))

The shared base weights w̄ train together with every task's deltas, scores, normalisation and
head; the loss is Σ_k (task loss_k + (λ/L)·Σ_i |s_i^k|), and every step sees a balanced batch
(``batch_size`` images of *each* task, as the paper's 12 per task). One model holds the shared
layers; each task's parameters live apart and are swapped into the layers before its part of
the batch, so gradients of the shared weights add up over the tasks in one optimizer step.

With ``method="finetune"`` the base is fine-tuned jointly with per-task heads and normalisation
and no deltas: the first half of the memory-efficient variant (paper appendix D), whose second
half is ordinary incremental TAPS per task from that base (:func:`train_memory_efficient`).

At the end the run writes ``base.safetensors`` (the trained shared weights, loadable with
``create_backbone(..., checkpoint=)``) and one task pack per task, ``task-<name>.safetensors``,
so :class:`taps.multitask.MultiTaskModel` serves a joint run's tasks like incremental ones.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .adaptation import gated_layers, head_name, norm_layers, replace_module
from .backbones import zero_parameters
from .backbones import device_description, input_normalization, save_backbone_checkpoint
from .methods import fix_gates, set_train_mode
from .packs import NORM_FIELDS, save_pack
from .penalty import penalty_weights, sparsity_penalty
from .errors import TrainingError
from .gate import gate_on
from .stats import layer_report, summarize
from .trainer import (EpochEvent, Normalize, StartEvent, StepEvent, TrainConfig, TrainResult, _emit, build_model,
                      eval_loader, evaluate, load_task_data, mixed_precision_dtype, prepare_run, seed_everything)
from .schedule import build_scheduler, penalty_ramp

BASE = "base.safetensors"
JOINT_METHODS = ("taps", "finetune")


def task_pack_name(task: str) -> str:
    return f"task-{task.replace('/', '_')}.safetensors"


class _TaskState(nn.Module):
    """Everything one task owns: a delta and a score per gated layer, its normalisation layers'
    parameters and statistics, its head."""

    def __init__(self, model: nn.Module, num_classes: int, trains_deltas: bool):
        super().__init__()
        self.deltas = nn.ParameterList()
        self.scores = nn.ParameterList()
        for _, layer in gated_layers(model):
            self.deltas.append(nn.Parameter(torch.zeros_like(layer.delta), requires_grad=trains_deltas))
            self.scores.append(nn.Parameter(layer.score.detach().clone(), requires_grad=layer.score.requires_grad))
        self.norm_params = nn.ParameterList()
        self.norm_buffers: list[dict[str, torch.Tensor]] = []
        for _, norm in norm_layers(model):
            for f in ("weight", "bias"):
                p = getattr(norm, f, None)
                if p is not None:
                    self.norm_params.append(nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
            self.norm_buffers.append({f: getattr(norm, f).detach().clone() for f in NORM_FIELDS[2:]
                                      if getattr(norm, f, None) is not None})
        head = model.get_submodule(head_name(model))
        self.head = nn.Linear(head.in_features, num_classes, bias=head.bias is not None,
                              device=head.weight.device, dtype=head.weight.dtype)
        zero_parameters(self.head)  # a new head starts at zero, as create_backbone's do

    def install(self, model: nn.Module, head: str) -> None:
        """Put this task's tensors into the model's layers (references: nothing is copied)."""
        for (_, layer), delta, score in zip(gated_layers(model), self.deltas, self.scores):
            layer.delta, layer.score = delta, score
        params = iter(self.norm_params)
        for (_, norm), buffers in zip(norm_layers(model), self.norm_buffers):
            for f in ("weight", "bias"):
                if getattr(norm, f, None) is not None:
                    setattr(norm, f, next(params))
            for f, value in buffers.items():
                setattr(norm, f, value)
        replace_module(model, head, self.head)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.norm_buffers = [{f: fn(v) for f, v in b.items()} for b in self.norm_buffers]
        return self


def _base_state(model: nn.Module, pretrained_norms: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """The plain backbone's state after joint training: trained shared weights, the pretrained
    normalisation (each task has its own), no head, no TAPS tensors."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith((".delta", ".score")) or key == head or key.startswith(head + "."):
            continue
        state[key] = pretrained_norms.get(key, value).detach().cpu().contiguous()
    return state


def train_joint(config: TrainConfig, callbacks=(), *, should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Train ``config.tasks`` jointly (Eq. 4); see the module docstring."""
    config.validate()
    tasks = list(config.tasks)
    out, device = prepare_run(config)

    data = {t: load_task_data(config, t) for t in tasks}
    first = data[tasks[0]]
    model = build_model(replace(config, method="taps", tasks=[]), len(first.classes)).to(device)
    head = head_name(model)
    if config.method == "finetune":
        fix_gates(model, set())  # no deltas: the shared weights themselves adapt
    for _, layer in gated_layers(model):  # Eq. 4: the base w̄ is shared *and* trained
        layer.weight.requires_grad_(True)
        if layer.bias is not None:
            layer.bias.requires_grad_(True)
    pretrained_norms = {f"{n}.{k}": v.detach().clone() for n, norm in norm_layers(model)
                        for k, v in norm.state_dict().items()}
    states = {t: _TaskState(model, len(data[t].classes), config.method == "taps").to(device) for t in tasks}
    mean, std = input_normalization(model)
    normalize = Normalize(mean, std).to(device)
    amp_dtype = mixed_precision_dtype(device, config.amp)

    shared = [p for _, layer in gated_layers(model) for p in (layer.weight, layer.bias) if p is not None]
    task_weights = [p for s in states.values() for p in [*s.deltas, *s.norm_params, *s.head.parameters()]
                    if p.requires_grad]
    scores = [p for s in states.values() for p in s.scores if p.requires_grad]
    groups = [{"params": shared + task_weights, "weight_decay": config.weight_decay, "name": "weights"}]
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "name": "scores", "lr": config.score_lr or config.lr})
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)

    pin = device.type == "cuda"
    drop_last = all(len(d.train) >= config.batch_size for d in data.values())
    steps_per_epoch = max(len(d.train) // config.batch_size if drop_last else 1 for d in data.values())
    total_steps = steps_per_epoch * config.epochs
    scheduler = build_scheduler(optimizer, total_steps, config.gate_freeze)
    weights = penalty_weights(model, config.penalty_mode).to(device) if config.method == "taps" else None

    report = layer_report(model)
    _emit(callbacks, "on_start", StartEvent(
        config=config.to_dict(), device=device_description(device), layer_names=[r.name for r in report],
        layer_kinds=[r.kind for r in report], layer_params=[r.params for r in report],
        classes=list(first.classes), train_size=sum(len(d.train) for d in data.values()),
        val_size=sum(len(d.val) for d in data.values()), test_size=sum(len(d.test) for d in data.values()),
        total_steps=total_steps, start_epoch=0, tasks=tasks))

    def loader(t: str, epoch: int) -> DataLoader:
        return DataLoader(data[t].train, batch_size=config.batch_size, shuffle=True, drop_last=drop_last,
                          num_workers=config.num_workers, pin_memory=pin,
                          generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))

    def cycle(t: str, epoch: int):
        while True:  # smaller tasks start over: every step has a batch of every task
            yield from loader(t, epoch)

    layers = gated_layers(model)  # the same modules throughout: tasks swap tensors, not layers
    history, status = [], "done"
    for epoch in range(config.epochs):
        seed_everything(config.seed * 1000 + epoch)
        batches = {t: cycle(t, epoch) for t in tasks}
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i + 1
            lam_now = config.lam * penalty_ramp(step, total_steps, config.penalty_warmup)
            optimizer.zero_grad(set_to_none=True)
            task_losses, penalties = [], []
            for t in tasks:
                states[t].install(model, head)
                set_train_mode(model, freeze_norm_stats=config.freezes_norm_stats)
                images, labels = (x.to(device, non_blocking=True) for x in next(batches[t]))
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(normalize(images))
                    task_loss = F.cross_entropy(logits.float(), labels)
                penalty = (sparsity_penalty(model, lam_now, weights=weights) if weights is not None
                           else torch.zeros((), device=device))
                loss = task_loss + penalty
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss of task {t} became {loss.item()} at step {step}. "
                                        f"Try a lower learning rate than {config.lr}.")
                loss.backward()  # shared weights: gradients add up over the tasks (Eq. 4's sum)
                task_losses.append(task_loss.item())
                penalties.append(penalty.item())
                seen += labels.numel()
                correct += (logits.argmax(1) == labels).sum().item()
                loss_sum += task_loss.item() * labels.numel()
            optimizer.step()
            scheduler.step()
            all_scores = torch.stack([s.detach() for t in tasks for s in states[t].scores]).tolist()  # one sync
            _emit(callbacks, "on_step", StepEvent(
                step=step, total_steps=total_steps, epoch=epoch, loss=sum(task_losses) + sum(penalties),
                task_loss=sum(task_losses), penalty=sum(penalties), lam_now=lam_now,
                lr=optimizer.param_groups[0]["lr"], scores=all_scores,
                active_layers=sum(gate_on(s, layers[j % len(layers)][1].threshold) for j, s in enumerate(all_scores)),
                images_per_sec=seen / max(time.perf_counter() - t0, 1e-9), task_losses=task_losses))
            if should_stop():
                status = "cancelled"
                break
        if status == "cancelled":
            break
        per_task = {}
        for t in tasks:
            states[t].install(model, head)
            stats = summarize(model)
            per_task[t] = {
                "val_acc": evaluate(model, eval_loader(data[t].val, config, pin), device, amp_dtype, normalize),
                "test_acc": evaluate(model, eval_loader(data[t].test, config, pin), device, amp_dtype, normalize),
                **stats.to_dict()}
        mean_of = lambda key: sum(m[key] for m in per_task.values()) / len(per_task)
        record = EpochEvent(
            epoch=epoch, epochs=config.epochs, train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
            val_acc=mean_of("val_acc"), test_acc=mean_of("test_acc"),
            task_specific_layers_pct=mean_of("task_specific_layers_pct"),
            additional_params_pct=mean_of("additional_params_pct"),
            active_layers=sum(m["active_layers"] for m in per_task.values()),
            seconds=time.perf_counter() - t0, tasks=per_task)
        history.append(asdict(record))
        _emit(callbacks, "on_epoch", record)

    final = history[-1] if history else {}
    per_task = final.get("tasks") or {}
    # Means over tasks for accuracies and percentages, sums for counts; each task's own under "tasks".
    metrics = {k: final.get(k) for k in ("val_acc", "test_acc", "train_acc", "task_specific_layers_pct",
                                        "additional_params_pct")}
    metrics.update({k: sum(m[k] for m in per_task.values()) for k in (
        "gated_layers", "active_layers", "delta_params", "norm_params", "head_params", "additional_params")})
    metrics["base_params"] = next((m["base_params"] for m in per_task.values()), None)
    metrics["tasks"] = per_task
    packs: dict[str, str] = {}
    if out and status == "done":
        base_state = _base_state(model, pretrained_norms, head)
        save_backbone_checkpoint(base_state, out / BASE, like=model)
        for t in tasks:
            states[t].install(model, head)
            packs[t] = str(save_pack(
                model, out / task_pack_name(t), class_names=list(data[t].classes), lam=config.lam,
                metrics=metrics["tasks"].get(t, {}),
                extra={"method": f"{config.method}_joint", "dataset": t, "resolution": config.resolution,
                       "mean": list(mean), "std": list(std), "base": BASE, "tasks": tasks}))
    states[tasks[0]].install(model, head)
    return TrainResult(status=status, epochs_done=len(history), metrics=metrics,
                       layer_report=[r.to_dict() for r in layer_report(model)], pack_path=None,
                       history=history, task_packs=packs, base_path=str(out / BASE) if packs else None)


def train_memory_efficient(config: TrainConfig, callbacks=()) -> dict[str, TrainResult]:
    """Paper appendix D: jointly fine-tune a multi-head base on ``config.tasks`` (constant memory
    per task afterwards), then incremental TAPS per task from that base. Returns the joint run's
    result under "joint" and each task's TAPS run under its name; every pack fits one base."""
    if not config.out_dir:
        raise TrainingError("the memory-efficient variant needs out_dir: its TAPS runs start from the saved base")
    out = Path(config.out_dir)
    joint = train_joint(replace(config, method="finetune", out_dir=str(out / "joint")), callbacks)
    from .trainer import train

    results = {"joint": joint}
    for t in config.tasks:
        results[t] = train(replace(config, tasks=[], dataset=t, method="taps", checkpoint=joint.base_path,
                                   out_dir=str(out / t)), callbacks)
    return results
