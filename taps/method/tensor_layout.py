"""Weight-sized work in whatever memory layout the weights are in.

On CPU the trainer keeps convolutions channels-last (oneDNN's fast path), so a conv weight and
its gradient are (O, I, kH, kW) tensors stored as (O, kH, kW, I). Flattening such a tensor with
``reshape(-1)`` copies it into logical order; walking it in storage order does not.
"""
from __future__ import annotations

import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """Stored channels-last and not also plain contiguous (1×1 kernels are both)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ over all elements with no weight-sized temporary when both share a layout."""
    if is_channels_last(a) or is_channels_last(b):
        a, b = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
    return torch.dot(a.reshape(-1), b.reshape(-1))


def view_like(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The first ``like.numel()`` elements of a 1-D buffer, shaped and laid out as ``like``."""
    flat = flat[:like.numel()]
    if is_channels_last(like):
        o, i, h, w = like.shape
        return flat.view(o, h, w, i).permute(0, 3, 1, 2)
    return flat.view(like.shape)
