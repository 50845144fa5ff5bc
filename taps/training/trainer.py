"""One training loop for TAPS and its baselines, one task or several, a fixed λ, a λ path or a budget.

    result = train(TrainConfig.from_flat(dataset="fashion-mnist", method="taps", lam=1.0))

The loop is plain PyTorch a reader can hold in their head: build the task set (data, model) and
the sparsity schedule, one optimizer with the scores in their own group, a cosine schedule, and
per step ``loss = Σ_tasks task_loss + λ(step)·penalty``. What differs between runs lives in two
small objects: the task set (``taps.training.tasks``: one task, or several on a shared base, Eq. 4) and
the sparsity schedule (``taps.training.sparsity``: λ at a step, what happens after it, what a checkpoint
keeps and what the metrics add). Everything the outside world sees goes through callbacks
(``taps.training.events``), so the CLI, the workbench and the tests observe the same events; the loop
never knows who listens.
"""
from __future__ import annotations

import collections
import logging
import math
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import device_description, input_normalization, resolve_device
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from ..errors import TrainingError
from .evaluation import Normalize, eval_loader, evaluate
from .events import Callback, EpochEvent, StartEvent, StepEvent, TrainResult, emit
from ..method.layers import set_gates_learning
from .methods import set_train_mode
from .schedule import build_scheduler
from .sparsity import sparsity_schedule
from ..method.stats import layer_report
from .tasks import PACK, JointTasks, OneTask, TaskSet, build_model, load_task_data, trained_parameters
from .train_config import NORM_STATS, TrainConfig

# The public API of training, importable from here as it always was.
__all__ = ["CHECKPOINT", "NORM_STATS", "PACK", "Callback", "EpochEvent", "Normalize", "StartEvent", "StepEvent",
           "TrainConfig", "TrainResult", "build_model", "build_optimizer", "chance_warning", "eval_loader",
           "evaluate", "input_normalization", "load_task_data", "mixed_precision_dtype", "prepare_run",
           "seed_everything", "sgd", "train", "uses_channels_last"]

log = logging.getLogger(__name__)


def train(config: TrainConfig, callbacks: list[Callback] = (), *, resume: bool = False,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Train one task, or ``config.data.tasks`` jointly. With ``resume`` and a checkpoint in
    ``config.out_dir`` it continues after the last finished epoch and ends exactly where an
    uninterrupted run would (CPU, seeded). ``should_stop`` is polled every step: a cooperative
    cancel that keeps the last checkpoint."""
    config.validate()
    out, device = prepare_run(config)
    amp_dtype = mixed_precision_dtype(device, config.optim.amp)
    channels_last = uses_channels_last(device, amp_dtype)
    tasks = (JointTasks if config.data.tasks else OneTask)(config, device, channels_last)
    model, steps_per_epoch = tasks.model, tasks.steps_per_epoch
    normalize = Normalize(*input_normalization(model)).to(device)
    schedule = sparsity_schedule(config, steps_per_epoch, model, len(tasks.classes))
    tasks.set_penalty(schedule.penalty_kind)
    optimizer = sgd(*tasks.trained_parameters(), config)
    scheduler = build_scheduler(optimizer, schedule.total_steps, config.sparsity.gate_freeze, schedule.stages)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 needs loss scaling

    start_epoch, history = 0, []
    ckpt_path = out / CHECKPOINT if out else None
    if resume and ckpt_path and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, config, device, like=tasks.state())
        tasks.load_state(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        schedule.load_state_dict(ckpt["schedule"])
        if ckpt.get("scaler"):  # float16 runs only (a disabled scaler's state is empty)
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
    emit(callbacks, "on_start", start_event(config, device, tasks, schedule, start_epoch))

    def accuracy(split) -> float:
        return evaluate(model, eval_loader(split, config, tasks.pin), device, amp_dtype, normalize)

    # The scores' group has lr 0 after each stage's gate freeze: no gradient is wanted for them then.
    score_group = next((g for g in optimizer.param_groups if g["name"] == "scores"), None)
    status = "done"
    for epoch in range(start_epoch, schedule.total_epochs):
        # Seeding per epoch makes shuffling and augmentation of epoch e independent of whether
        # the run was resumed, so a resumed run reproduces an uninterrupted one.
        seed_everything(config.seed * 1000 + epoch)
        set_train_mode(model, freeze_norm_stats=config.freezes_norm_stats)
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        recent_losses = collections.deque(maxlen=max(1, steps_per_epoch // 4))  # each step's task losses
        for i, step_batches in enumerate(tasks.batches(epoch)):
            step = epoch * steps_per_epoch + i + 1
            # Before the forward pass, so last step's gradients are freed while activations grow.
            optimizer.zero_grad(set_to_none=True)
            if score_group is not None:
                set_gates_learning(score_group["params"], score_group["lr"] > 0)
            lam_now = schedule.lam_at(step)
            step_loss, task_losses, penalties = 0.0, [], []
            for task, images, labels in step_batches:  # one task, or a batch of each (Eq. 4's sum)
                tasks.install(task)
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(normalize(images))
                    task_loss = F.cross_entropy(logits.float(), labels)
                penalty = tasks.penalty(lam_now)
                loss = task_loss + penalty
                if not torch.isfinite(loss):
                    of_task = f" of task {task}" if len(tasks.names) > 1 else ""
                    kept = f"; the last good checkpoint is {ckpt_path}" if ckpt_path and ckpt_path.exists() else ""
                    raise TrainingError(f"loss{of_task} became {loss.item()} at step {step} (epoch {epoch + 1})"
                                        f"{kept}. Try a lower learning rate than {config.optim.lr}.")
                scaler.scale(loss).backward()  # shared weights: gradients add up over the tasks
                seen += labels.numel()
                correct += (logits.argmax(1) == labels).sum().item()
                task_losses.append(task_loss.item())
                loss_sum += task_losses[-1] * labels.numel()
                penalties.append(penalty.item())
                step_loss += loss.item()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            recent_losses.append(task_losses)
            scores = tasks.read_scores()
            tasks.prime_gates(scores)
            schedule.after_step(step, scores)
            emit(callbacks, "on_step", StepEvent(
                step=step, total_steps=schedule.total_steps, epoch=epoch, loss=step_loss, task_loss=sum(task_losses),
                penalty=sum(penalties), lam_now=lam_now, lr=optimizer.param_groups[0]["lr"], scores=scores,
                active_layers=tasks.active_layers(scores), images_per_sec=seen / max(time.perf_counter() - t0, 1e-9),
                task_losses=task_losses if len(tasks.names) > 1 else None))
            if should_stop():
                status = "cancelled"
                break
        if status == "cancelled":
            break
        measured = tasks.epoch_metrics(accuracy)
        record = EpochEvent(epoch=epoch, epochs=schedule.total_epochs, train_loss=loss_sum / max(seen, 1),
                            train_acc=correct / max(seen, 1), **measured, seconds=time.perf_counter() - t0,
                            **schedule.epoch_fields(epoch))
        if epoch == 0:
            record.warning = chance_warnings(recent_losses, tasks)
        if (stage := schedule.frontier_stage(epoch)) and out:  # a frontier point: keep this stage's task
            record.snapshot = tasks.save_stage_pack(out, stage, record)
        history.append(asdict(record))
        emit(callbacks, "on_epoch", record)  # first: a checkpoint never runs ahead of what listeners recorded
        if ckpt_path:
            save_checkpoint(ckpt_path, config=config, epoch=epoch, model=tasks.state(), optimizer=optimizer,
                            scheduler=scheduler, scaler=scaler, history=history, schedule=schedule.state_dict())
            emit(callbacks, "on_checkpoint", ckpt_path)

    tasks.install(tasks.names[0])
    metrics = tasks.final_metrics(history[-1] if history else {}) | schedule.final_metrics(history)
    points = schedule.points(tasks.task_metrics(metrics), tasks.point_kind, history) if history else []
    metrics["points"] = [p.to_dict() for p in points]  # what the run adds to the frontier, as the store keeps it
    saved = tasks.save_packs(out, schedule.final_lam, metrics) if out and status == "done" else {}
    return TrainResult(status=status, epochs_done=len(history), metrics=metrics,
                       layer_report=[r.to_dict() for r in layer_report(model)], history=history,
                       stage_packs=[h["snapshot"] for h in history if h.get("snapshot")],
                       **({"pack_path": None} | saved))


def start_event(config: TrainConfig, device: torch.device, tasks: TaskSet, schedule, start_epoch: int) -> StartEvent:
    report = layer_report(tasks.model)
    return StartEvent(
        config=config.to_dict(), device=device_description(device), layer_names=[r.name for r in report],
        layer_kinds=[r.kind for r in report], layer_params=[r.params for r in report], classes=tasks.classes,
        train_size=sum(len(d.train) for d in tasks.data.values()), val_size=sum(len(d.val) for d in tasks.data.values()),
        test_size=sum(len(d.test) for d in tasks.data.values()), total_steps=schedule.total_steps,
        start_epoch=start_epoch, tasks=list(config.data.tasks), total_epochs=schedule.total_epochs,
        steps_per_epoch=tasks.steps_per_epoch)


def chance_warning(recent_loss: float, num_classes: int) -> str | None:
    """A warning when the training loss at the end of the first epoch (its last quarter's steps)
    is still within 5 % of chance (ln C, what a model that has learned nothing scores), so a run
    that is not learning says so early."""
    chance = math.log(num_classes)
    if num_classes < 2 or recent_loss < 0.95 * chance:
        return None
    return (f"training loss {recent_loss:.3f} at the end of the first epoch is still at chance (ln {num_classes} "
            f"= {chance:.3f}): the model is not learning. Try another learning rate, norm_stats, or more epochs.")


def chance_warnings(recent_losses, tasks: TaskSet) -> str | None:
    """``chance_warning`` for each task (``recent_losses``: each step's task losses), logged."""
    warnings = []
    for k, task in enumerate(tasks.names):
        warning = chance_warning(statistics.fmean(step[k] for step in recent_losses), len(tasks.data[task].classes))
        if warning:
            warnings.append(warning if len(tasks.names) == 1 else f"task {task}: {warning}")
    for warning in warnings:
        log.warning("%s", warning)
    return " ".join(warnings) or None


def sgd(weights: list[nn.Parameter], scores: list[nn.Parameter], config: TrainConfig) -> torch.optim.SGD:
    """SGD with the scores in their own group: own lr, never weight decay."""
    optim = config.optim
    groups = [{"params": weights, "weight_decay": optim.weight_decay, "name": "weights"}]
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "name": "scores", "lr": optim.score_lr or optim.lr})
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``sgd`` over what trains in a single-task model."""
    return sgd(*trained_parameters(model), config)


def mixed_precision_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast on GPUs that have it, float16 (with loss scaling) on older ones; full
    precision on CPU, where autocast is slower than it saves."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def uses_channels_last(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Convolutions in NHWC: oneDNN's fast path on CPU (an EfficientNet-Lite0 step 1.6–1.9× faster,
    ResNet-50 1.15×, measured on 2 cores) and the tensor cores' under mixed precision."""
    return device.type == "cpu" or amp_dtype is not None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_run(config: TrainConfig) -> tuple[Path | None, torch.device]:
    """What every training run starts with: its output folder, seeds, the device, and
    deterministic kernels on CPU (a seeded CPU run repeats exactly)."""
    out = Path(config.out_dir) if config.out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    return out, device
