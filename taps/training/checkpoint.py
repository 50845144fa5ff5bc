"""A run's checkpoint: written after every epoch, read to resume exactly where the run stopped.

It holds what the run cannot rebuild from its settings — the trained tensors (never the frozen
base), the optimizer's momentum, the scheduler, the float16 loss scale, the sparsity schedule's
state and the history —
plus the settings that must match. Only tensors and plain values: it is read without unpickling.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch

from ..errors import ConfigError, TrainingError
from ..fileio import atomic_write
from ..method.tensor_checks import check_tensors

CHECKPOINT = "checkpoint.pt"
FIELDS = ("config", "epoch", "model", "optimizer", "scheduler", "history", "schedule")  # and "scaler" since float16


# Settings that change neither the numbers nor the checkpoint's tensors: a run may resume with others.
NOT_IN_RESUME_KEY = ("out_dir", "device", "num_workers", "recompute_weights")
# Settings added after checkpoints were first written: left out while at their default, so a run
# interrupted before they existed still resumes.
ADDED_LATER = {"train_norms": True, "head": None}


def resume_key(config) -> str:
    """Settings that must match for a checkpoint to be resumed (not where it lives, not the
    device, nor what changes memory or speed but not the numbers); ``config`` is a TrainConfig.
    Flat names: a key is the same whichever way the settings are grouped."""
    key = {k: v for k, v in config.to_flat().items()
           if k not in NOT_IN_RESUME_KEY and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    return json.dumps(key, sort_keys=True)


def save_checkpoint(path: Path, *, config, epoch: int, model: dict[str, torch.Tensor], optimizer, scheduler, scaler,
                    history: list[dict], schedule: dict[str, float]) -> None:
    state = {"config": resume_key(config), "epoch": epoch, "model": model, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "history": json.dumps(history),
             "schedule": schedule}
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path, config, device: torch.device, like: dict[str, torch.Tensor]) -> dict:
    """The checkpoint at ``path``, checked: safe to read, whole, written by a run with ``config``'s
    settings, its tensors named as ``like`` (the run's own trained tensors), shaped like them and finite."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TrainingError(f"refused to resume from {path} for safety: besides tensors it holds pickled "
                            "Python objects, and unpickling them could run arbitrary code; delete it to "
                            "train from the start") from exc
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or damaged
        raise TrainingError(f"cannot read the checkpoint {path} ({exc}); delete it to train from "
                            "the start") from exc
    if isinstance(ckpt, dict) and "schedule" not in ckpt and "budget_lam" in ckpt:  # written before schedules
        ckpt["schedule"] = {"lam": ckpt.pop("budget_lam")}
    _check_fields(ckpt, path)
    if ckpt["config"] != resume_key(config):
        raise ConfigError(f"{path} was written by a run with different settings; "
                          "resume with the run's own configuration")
    missing, unexpected = set(like) - set(ckpt["model"]), set(ckpt["model"]) - set(like)
    if missing or unexpected:
        raise TrainingError(f"{path} is not a checkpoint of this run (missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]})")
    check_tensors(ckpt["model"], str(path), TrainingError, like=like)
    ckpt["history"] = json.loads(ckpt["history"])
    return ckpt


def _check_fields(ckpt, path: Path) -> None:
    """The fields resuming reads are there, and the optimizer state and the schedule's and loss
    scaler's values are finite (the model's tensors are checked once their names are known to fit)."""
    missing = [f for f in FIELDS if f not in ckpt] if isinstance(ckpt, dict) else list(FIELDS)
    if missing or not all(isinstance(ckpt[f], dict) for f in ("model", "optimizer", "schedule")):
        raise TrainingError(f"{path} is not a checkpoint of this run (missing or malformed: "
                            f"{missing or ['model', 'optimizer', 'schedule']}); delete it to train from the start")
    buffers = {f"optimizer state {i} {k}": v for i, state in dict(ckpt["optimizer"].get("state", {})).items()
               for k, v in dict(state).items() if isinstance(v, torch.Tensor)}
    check_tensors(buffers, str(path), TrainingError)
    for owner in ("schedule", "scaler"):
        for name, value in dict(ckpt.get(owner) or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TrainingError(f"{path}: the {owner}'s {name} must be a finite number, got {value!r}")
