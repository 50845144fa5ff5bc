"""TAPS and the paper's baselines, all expressed with the same gated layers.

Every method adapts the model; the baselines then fix the gates instead of learning them:
  taps               learned gates (scores trained, sparsity penalty)
  finetune           every gate on: w = w̄ + δ with δ trained — with SGD and no weight decay this
                     follows exactly the trajectory of plain fine-tuning (tested), and its task pack
                     is a full fine-tuned model expressed as deltas
  feature_extractor  every gate off, normalisation frozen: only the head trains
  bn_only            every gate off: normalisation layers and the head train
  manual_freeze      the last k layers on (input→head order), k matched to a parameter budget
                     (paper Table 10); normalisation layers and the head train
So every run, whatever its method, yields the same statistics and the same kind of task pack.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..method.adaptation import adapt, gated_layers, head_name, norm_layers
from ..method.config import TAPSConfig
from ..errors import ConfigError
from .train_config import METHODS



def prepare_model(model: nn.Module, method: str, config: TAPSConfig, *,
                  freeze_layers: int | None = None, freeze_budget_pct: float | None = None) -> nn.Module:
    """Adapt ``model`` in place for ``method`` and return it."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "feature_extractor":
        config = replace(config, train_norms=False)
    adapt(model, config)
    if method == "taps":
        return model
    names = [n for n, _ in gated_layers(model)]
    if method == "finetune":
        on = set(names)
    elif method == "manual_freeze":
        k = freeze_layers if freeze_layers is not None else layers_for_budget(model, freeze_budget_pct)
        if not 0 <= k <= len(names):
            raise ConfigError(f"manual_freeze: {k} trainable layers asked, the model has {len(names)}")
        on = set(names[len(names) - k:])
    else:
        on = set()
    fix_gates(model, on)
    return model


@torch.no_grad()
def fix_gates(model: nn.Module, on: set[str]) -> None:
    """Freeze every gate: layers in ``on`` are task-specific with a trainable delta, the rest shared."""
    for name, layer in gated_layers(model):
        layer.score.fill_(layer.threshold + 1.0 if name in on else layer.threshold - 1.0)
        layer.score.requires_grad_(False)
        layer.delta.requires_grad_(name in on)


def layers_for_budget(model: nn.Module, budget_pct: float | None) -> int:
    """Largest k such that training the last k layers (plus norms and head) stays within
    ``budget_pct`` % additional parameters; a quarter of the layers when no budget is given."""
    layers = gated_layers(model)
    if budget_pct is None:
        return max(1, len(layers) // 4)
    if budget_pct < 0:
        raise ConfigError(f"freeze budget must be ≥ 0 %, got {budget_pct}")
    from ..method.stats import base_numel, norm_state_numel

    head = sum(p.numel() for p in model.get_submodule(head_name(model)).parameters())
    allowed = budget_pct / 100 * base_numel(model) - norm_state_numel(model) - head
    k, used = 0, 0
    for _, layer in reversed(layers):
        used += layer.delta.numel()
        if used > allowed:
            break
        k += 1
    return k


def set_train_mode(model: nn.Module, training: bool = True, freeze_norm_stats: bool = False) -> nn.Module:
    """model.train(), but normalisation layers keep their pretrained running statistics (eval
    mode) when they have nothing to train — a feature extractor really is fixed — or when
    ``freeze_norm_stats``: their affine parameters still train, on the statistics the
    pretrained features were built with."""
    model.train(training)
    if training:
        for _, norm in norm_layers(model):
            if freeze_norm_stats or not any(p.requires_grad for p in norm.parameters()):
                norm.eval()
    return model
