"""Backbone weights in files: saving them as safetensors with how to rebuild their model, and
loading a checkpoint (safetensors, or a .pth state_dict; never unpickled) strictly, head aside."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsUnavailableError
from ..method.tensor_checks import check_tensors
from .heads import head_names
from .names import IMAGENET_MEAN, IMAGENET_STD

BUILD_KEY = "taps_build"  # safetensors metadata: how to rebuild the model the weights belong to


def save_backbone_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike, like: nn.Module) -> Path:
    """Write backbone weights as safetensors with what ``create_backbone(checkpoint=path)``
    needs to rebuild the same model: build options (e.g. EfficientNet-Lite's TF BatchNorm eps
    and 'same' padding) and input normalisation, taken from ``like``."""
    import json

    from safetensors.torch import save

    from ..fileio import atomic_write

    cfg = getattr(like, "pretrained_cfg", None) or {}
    build = {"timm_kwargs": dict(cfg.get("taps_timm_kwargs") or {}), "mean": list(cfg.get("mean", IMAGENET_MEAN)),
             "std": list(cfg.get("std", IMAGENET_STD)), "input_size": list(cfg.get("input_size", (3, 224, 224)))}
    payload = save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                   metadata={BUILD_KEY: json.dumps(build)})
    return atomic_write(path, lambda fh: fh.write(payload))


def checkpoint_build(path: Path) -> dict:
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(BUILD_KEY)
        return json.loads(raw) if raw else {}
    except Exception:  # unreadable: _read_checkpoint reports it properly
        return {}


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        import safetensors.torch
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:
            raise WeightsUnavailableError(f"cannot read {path} as a .safetensors file: {e}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsUnavailableError(
            f"refused to load {path} for safety: besides tensors it holds pickled Python objects, "
            f"and unpickling them can run arbitrary code. Save only the weights "
            f"(torch.save(model.state_dict(), path) or safetensors.torch.save_file).") from e
    except Exception as e:
        raise WeightsUnavailableError(f"cannot read {path} as a PyTorch file: {e}") from e
    if isinstance(state, dict):  # common training-checkpoint wrappers
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state_dict (a dict of tensors).")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shorten(keys: list[str], limit: int = 8) -> str:
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_checkpoint(model: nn.Module, name: str, path: Path) -> bool:
    """Load ``path`` into ``model``; True if the checkpoint's head fit and was loaded too."""
    state = _read_checkpoint(path)
    own = model.state_dict()
    heads = head_names(model)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    # Strict for everything but the head: a partial load would train on half-random features.
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in state if k in own and not is_head(k) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{label}: {_shorten(keys)}" for label, keys in (
            ("missing keys", missing), ("unexpected keys", unexpected),
            ("shape mismatches (checkpoint vs model)", shapes)) if keys]
        raise WeightsUnavailableError(
            f"checkpoint {path} does not fit backbone '{name}' — {'; '.join(problems)}. "
            f"Was it saved from a '{name}' model with model.state_dict()?")
    # The head is kept only if it fits the requested class count; otherwise it stays fresh.
    own_head = [k for k in own if is_head(k)]
    head_fits = all(k in state and state[k].shape == own[k].shape for k in own_head)
    kept = {k: v for k, v in state.items() if not is_head(k) or head_fits}
    check_tensors(kept, f"checkpoint {path}", WeightsUnavailableError, like=own)
    model.load_state_dict(kept, strict=False)
    return head_fits
