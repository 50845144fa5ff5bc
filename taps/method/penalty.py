"""The sparsity penalty of Eq. 3: (λ/L)·Σ|s_i|, or its parameter-weighted variant."""
from __future__ import annotations

import torch
from torch import nn

from .adaptation import gated_layers
from .config import PenaltyMode


def penalty_weights(model: nn.Module, mode: PenaltyMode | None = None) -> torch.Tensor:
    """Per-layer weights w_i with Σ w_i = 1: 1/L ("layers") or numel_i/Σnumel ("params")."""
    layers = [m for _, m in gated_layers(model)]
    if not layers:
        raise ValueError("model has no gated layers; call taps.adapt(model) first")
    mode = mode or getattr(getattr(model, "taps_config", None), "penalty_mode", "layers")
    if mode == "layers":
        return torch.full((len(layers),), 1.0 / len(layers))
    if mode == "params":
        sizes = torch.tensor([float(m.delta.numel()) for m in layers], dtype=torch.float64)
        return (sizes / sizes.sum()).float()
    raise ValueError(f"unknown penalty mode {mode!r}; use 'layers' or 'params'")


class SparsityPenalty:
    """λ·Σ w_i|s_i| for one model, its scores and weights found once: a training loop calls it
    every step, and walking a DenseNet's modules for its scores costs more than the penalty."""

    def __init__(self, model: nn.Module, mode: PenaltyMode | None = None, weights: torch.Tensor | None = None):
        weights = penalty_weights(model, mode) if weights is None else weights
        self.scores = [m.score for _, m in gated_layers(model)]
        self.weights = weights.to(self.scores[0].device, self.scores[0].dtype)

    def __call__(self, lam: float) -> torch.Tensor:
        return lam * torch.sum(self.weights * torch.stack(self.scores).abs())


def sparsity_penalty(model: nn.Module, lam: float, mode: PenaltyMode | None = None,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """λ·Σ w_i|s_i|; pass ``weights`` (from ``penalty_weights``) to skip recomputing them each step."""
    return SparsityPenalty(model, mode, weights)(lam)
