"""The one check of tensors read from outside (task packs, run checkpoints, weights files):
shape, dtype and finiteness, before any of them is used, with a message naming the file and the
tensor. A NaN in a pack's delta would otherwise load, make every output NaN, and argmax would
quietly answer class 0."""
from __future__ import annotations

from typing import Callable, Mapping

import torch


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating-point"
    return "boolean" if dtype == torch.bool else "integer"


def check_tensors(tensors: Mapping[str, object], where: str, error: Callable[[str], Exception], *,
                  like: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise ``error(message)`` at the first tensor of ``tensors`` that is not a tensor, holds NaN
    or ±inf, or (for the names in ``like``) differs in shape or kind of dtype (floating-point,
    integer, boolean) from its counterpart there. Values are cast on loading, so float16 for
    float32 is fine; an integer where a float belongs is not. Complex tensors are never wanted."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise error(f"{where}: {name!r} is a {type(tensor).__name__}, not a tensor")
        want = like.get(name) if like is not None else None
        if want is not None and tuple(tensor.shape) != tuple(want.shape):
            raise error(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(want.shape)}")
        kind = _kind(tensor.dtype)
        if kind == "complex" or (want is not None and kind != _kind(want.dtype)):
            expected = _kind(want.dtype) if want is not None else "real"
            raise error(f"{where}: tensor {name!r} is {tensor.dtype} ({kind}), expected a {expected} tensor")
        if kind == "floating-point":
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                raise error(f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}")
