"""Merge: bake w̄ + I·δ into plain layers so inference costs exactly what the backbone costs."""
from __future__ import annotations

import copy

from torch import nn

from .adaptation import gated_layers, replace_module
from .composition import ComposeOncePerForward


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return a model of the original module types (nn.Conv2d / nn.Linear) with the active
    deltas added to the weights. Like PEFT's ``merge_and_unload``; the result has no TAPS state."""
    if not gated_layers(model):
        raise ValueError("model has no gated layers to merge")
    merged = model if inplace else copy.deepcopy(model)
    for name, layer in gated_layers(merged):
        replace_module(merged, name, layer.to_plain())
    ComposeOncePerForward.uninstall(merged)
    for attr in ("taps_config", "taps_head"):
        if attr in merged.__dict__:
            delattr(merged, attr)
    return merged
