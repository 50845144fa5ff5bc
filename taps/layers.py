"""Gated layers: w = w̄ + I_τ(s)·δ with a straight-through gate.

The gated layers subclass the layers they replace, so code that checks ``isinstance(m,
nn.Conv2d)`` keeps working, and the frozen pretrained ``weight``/``bias`` keep their state-dict
names. Only ``delta`` (zero-initialised) and ``score`` (one scalar) are new.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ComposeWeight(torch.autograd.Function):
    """w = w̄ + I_τ(s)·δ, with the straight-through gradient for s.

    Backward: ∂L/∂δ = I·∂L/∂w and ∂L/∂s = ⟨∂L/∂w, δ⟩ (the gradient of w̄ + s·δ), so a layer that
    is off still learns whether to switch back on. Fused into one Function to avoid keeping
    intermediate tensors and to skip the multiply when the gate is 0 or 1.
    """

    @staticmethod
    def forward(ctx, weight, delta, score, threshold: float):
        on = bool(score.detach() >= threshold)
        ctx.on = on
        ctx.save_for_backward(delta)
        return weight + delta if on else weight.clone()

    @staticmethod
    def backward(ctx, grad_w):
        (delta,) = ctx.saved_tensors
        grad_delta = grad_score = None
        if ctx.needs_input_grad[1]:
            grad_delta = grad_w if ctx.on else torch.zeros_like(delta)
        if ctx.needs_input_grad[2]:
            grad_score = torch.sum(grad_w * delta).reshape(())
        return None, grad_delta, grad_score, None


def hard_gate(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """I_τ(s) with the straight-through gradient (identity), as in the paper's Algorithm 1."""
    hard = (score >= threshold).to(score.dtype)
    return score + (hard - score).detach()


class GatedLayer:
    """Mixin holding what TAPS adds to a layer: ``delta``, ``score`` and the threshold τ."""

    delta: nn.Parameter
    score: nn.Parameter
    threshold: float

    def _init_taps(self, threshold: float, score_init: float) -> None:
        self.threshold = float(threshold)
        self.delta = nn.Parameter(torch.zeros_like(self.weight, requires_grad=True))
        self.score = nn.Parameter(
            torch.tensor(float(score_init), dtype=self.weight.dtype, device=self.weight.device)
        )
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @property
    def active(self) -> bool:
        return bool(self.score.detach() >= self.threshold)

    def composed_weight(self) -> torch.Tensor:
        return ComposeWeight.apply(self.weight, self.delta, self.score, self.threshold)

    def merged_weight(self) -> torch.Tensor:
        """The weight a plain layer would hold: w̄ + I·δ, without autograd."""
        with torch.no_grad():
            return self.weight + self.delta if self.active else self.weight.clone()

    def extra_repr(self) -> str:  # shown by print(model)
        return f"{super().extra_repr()}, taps(threshold={self.threshold}, score={self.score.item():.3f})"


def _like(cls, layer: nn.Module, **kwargs) -> nn.Module:
    """Build ``cls`` with ``layer``'s hyper-parameters on the meta device (no allocation)."""
    gated = cls(**kwargs, bias=layer.bias is not None, device="meta", dtype=layer.weight.dtype)
    gated.weight = layer.weight
    gated.bias = layer.bias
    gated.train(layer.training)
    return gated


class GatedConv2d(GatedLayer, nn.Conv2d):
    @classmethod
    def from_layer(cls, conv: nn.Conv2d, threshold: float, score_init: float) -> "GatedConv2d":
        gated = _like(
            cls, conv, in_channels=conv.in_channels, out_channels=conv.out_channels,
            kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode,
        )
        gated._init_taps(threshold, score_init)
        return gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.composed_weight(), self.bias)

    def to_plain(self) -> nn.Conv2d:
        plain = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, self.bias is not None, self.padding_mode,
            device="meta", dtype=self.weight.dtype,
        )
        return _fill_plain(plain, self)


class GatedLinear(GatedLayer, nn.Linear):
    @classmethod
    def from_layer(cls, linear: nn.Linear, threshold: float, score_init: float) -> "GatedLinear":
        gated = _like(cls, linear, in_features=linear.in_features, out_features=linear.out_features)
        gated._init_taps(threshold, score_init)
        return gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.composed_weight(), self.bias)

    def to_plain(self) -> nn.Linear:
        plain = nn.Linear(
            self.in_features, self.out_features, self.bias is not None,
            device="meta", dtype=self.weight.dtype,
        )
        return _fill_plain(plain, self)


def _fill_plain(plain: nn.Module, gated: GatedLayer) -> nn.Module:
    plain.weight = nn.Parameter(gated.merged_weight(), requires_grad=False)
    if gated.bias is not None:
        plain.bias = nn.Parameter(gated.bias.detach().clone(), requires_grad=False)
    plain.train(gated.training)
    return plain


# Exact types only: subclasses (e.g. timm's Conv2dSame, or nn.MultiheadAttention's out_proj whose
# weight is read directly by the attention kernel) may not route their forward through `weight`.
GATED_TYPES: dict[type, type] = {nn.Conv2d: GatedConv2d, nn.Linear: GatedLinear}
