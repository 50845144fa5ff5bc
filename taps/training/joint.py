"""Joint multi-task TAPS (paper §3 Eq. 4, §4.2): one base trained for K tasks at once.

    result = train(TrainConfig.from_flat(tasks=["fashion-mnist", "digits"], lam=0.5, out_dir="runs/joint"))

``taps.training.trainer.train`` trains a joint run like any other, with the task set of ``taps.training.tasks``
(see there how the tasks share the base). This module adds the paper's memory-efficient variant
(appendix D): a jointly fine-tuned multi-head base, then incremental TAPS per task from it.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TrainingError
from .events import TrainResult
from .tasks import BASE, task_pack_name
from .train_config import TrainConfig
from .trainer import train

__all__ = ["BASE", "task_pack_name", "train_memory_efficient"]


def train_memory_efficient(config: TrainConfig, callbacks=()) -> dict[str, TrainResult]:
    """Paper appendix D: jointly fine-tune a multi-head base on ``config.data.tasks`` (constant memory
    per task afterwards), then incremental TAPS per task from that base. Returns the joint run's
    result under "joint" and each task's TAPS run under its name; every pack fits one base."""
    if not config.out_dir:
        raise TrainingError("the memory-efficient variant needs out_dir: its TAPS runs start from the saved base")
    out = Path(config.out_dir)
    joint = train(config.updated(method="finetune", out_dir=str(out / "joint")), callbacks)
    results = {"joint": joint}
    for t in config.data.tasks:
        results[t] = train(config.updated(tasks=[], dataset=t, method="taps", checkpoint=joint.base_path,
                                   out_dir=str(out / t)), callbacks)
    return results
