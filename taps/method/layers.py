"""Gated layers: w = w̄ + I_τ(s)·δ with a straight-through gate.

The gated layers subclass the layers they replace, so code that checks ``isinstance(m,
nn.Conv2d)`` keeps working, and the frozen pretrained ``weight``/``bias`` keep their state-dict
names. Only ``delta`` (zero-initialised) and ``score`` (one scalar) are new. The composition
w̄ + I·δ and its straight-through gradient live in ``taps.method.composition``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.conv2d_same import conv2d_same
from timm.layers.padding import pad_same
from torch import nn

from .gate import gate_on
from .composition import PRECOMPOSED, ComposeScratch, compose_weights
from .recompute import GatedConv2dFunction, GatedLinearFunction


def hard_gate(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """I_τ(s) with the straight-through gradient (identity), as in the paper's Algorithm 1."""
    hard = gate_on(score, threshold).to(score.dtype)
    return score + (hard - score).detach()


class GatedLayer:
    """Mixin holding what TAPS adds to a layer: ``delta``, ``score`` and the threshold τ."""

    delta: nn.Parameter
    score: nn.Parameter
    threshold: float
    # Recompute w̄ + δ in the backward pass instead of keeping it (taps.method.recompute): one weight
    # copy less in training memory, one more add per active layer per step.
    recompute: bool = False

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
        """I_τ(s) as a bool. Reading it from the score syncs a GPU, once per layer per forward
        pass; the trainer instead primes every layer from the one batched read of the scores it
        makes per step (``prime_gates``). A primed state holds while the score tensor, its version
        (bumped by every in-place update: optimizer steps, ``fill_`` under no_grad, loading) and τ
        are unchanged; otherwise the score is read again."""
        key = self._gate_key()
        cached = self.__dict__.get("_primed_gate")
        if cached is not None and cached[0] == key:
            return cached[1]
        return bool(gate_on(self.score.detach(), self.threshold))

    def _gate_key(self) -> tuple:
        return id(self.score), self.score.data_ptr(), self.score._version, self.threshold

    def prime_gate(self, score_value: float) -> None:
        """Record the gate state for ``score_value``, the score's current value read in a batch."""
        self.__dict__["_primed_gate"] = (self._gate_key(), gate_on(score_value, self.threshold))

    def composed_weight(self) -> torch.Tensor:
        """w̄ + I·δ as a new tensor, differentiable in δ and s."""
        return compose_weights([self])[0]

    def _recomputing(self) -> bool:
        return self.recompute and torch.is_grad_enabled() and not self._base_as_is()

    def _base_as_is(self) -> bool:
        """Off, with a score that takes no gradient (gates frozen) and a frozen w̄: nothing in
        the backward pass needs this layer's weight gradient (∂L/∂δ is 0 while off, ∂L/∂s is
        not wanted), so the layer computes with w̄ itself, untracked, and its op skips the
        weight-gradient work a fine-tuned layer would do."""
        return not (self.score.requires_grad or self.weight.requires_grad) and not self.active

    def _forward_weight(self) -> torch.Tensor:
        """composed_weight() for this layer's own forward pass: the one its model composed for
        this pass (see ComposeOncePerForward) if there is one; else, while gradients are
        recorded, composed into a kept buffer (see ComposeScratch); without them, a transient."""
        precomposed = self.__dict__.pop(PRECOMPOSED, None)
        if precomposed is not None:
            return precomposed
        if not torch.is_grad_enabled():
            return self.composed_weight()
        if self._base_as_is():
            return self.weight
        return compose_weights([self], [self.compose_scratch()])[0]

    def compose_scratch(self) -> ComposeScratch:
        scratch = self.__dict__.get("_compose_scratch")
        if scratch is None:
            scratch = self.__dict__["_compose_scratch"] = ComposeScratch()
        return scratch

    def merged_weight(self) -> torch.Tensor:
        """The weight a plain layer would hold: w̄ + I·δ, without autograd."""
        with torch.no_grad():
            return self.weight + self.delta if self.active else self.weight.clone()

    def extra_repr(self) -> str:  # shown by print(model)
        return f"{super().extra_repr()}, taps(threshold={self.threshold}, score={self.score.item():.3f})"


def _retype(layer: nn.Module, cls: type) -> nn.Module:
    """A shallow copy of ``layer`` as class ``cls``: same hyper-parameters and the same (shared)
    weight tensors, with its own parameter dicts so adding ``delta`` leaves ``layer`` untouched.
    Works for any layer class without knowing its constructor."""
    new = copy.copy(layer)
    new.__class__ = cls
    for attr in ("_parameters", "_buffers", "_modules"):
        new.__dict__[attr] = layer.__dict__[attr].copy()
    return new


class _GatedBase(GatedLayer):
    plain_type: type  # the layer class this gated class replaces

    @classmethod
    def from_layer(cls, layer: nn.Module, threshold: float, score_init: float):
        gated = _retype(layer, cls)
        gated._init_taps(threshold, score_init)
        return gated

    def to_plain(self) -> nn.Module:
        """The layer of the original class with w̄ + I·δ baked in."""
        plain = _retype(self, self.plain_type)
        del plain._parameters["delta"], plain._parameters["score"]
        del plain.__dict__["threshold"]
        plain.__dict__.pop("recompute", None)
        plain.__dict__.pop("_primed_gate", None)
        plain.__dict__.pop("_compose_scratch", None)
        plain.__dict__.pop(PRECOMPOSED, None)
        plain.weight = nn.Parameter(self.merged_weight(), requires_grad=False)
        return plain


class GatedConv2d(_GatedBase, nn.Conv2d):
    plain_type = nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._recomputing() and not isinstance(self.padding, str):  # 'same'/'valid': plain path
            padding = self.padding
            if self.padding_mode != "zeros":
                x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)
            return GatedConv2dFunction.apply(x, self.weight, self.delta, self.score, self.bias, self.active,
                                             self.stride, padding, self.dilation, self.groups)
        return self._conv_forward(x, self._forward_weight(), self.bias)


class GatedConv2dSame(_GatedBase, Conv2dSame):
    """timm's TF-style 'same'-padded convolution (TF-ported weights, e.g. EfficientNet-Lite)."""

    plain_type = Conv2dSame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._recomputing():  # conv2d_same's own steps: pad, then an unpadded convolution
            x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
            return GatedConv2dFunction.apply(x, self.weight, self.delta, self.score, self.bias, self.active,
                                             self.stride, (0, 0), self.dilation, self.groups)
        return conv2d_same(x, self._forward_weight(), self.bias, self.stride, self.padding,
                           self.dilation, self.groups)


class GatedLinear(_GatedBase, nn.Linear):
    plain_type = nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._recomputing():
            return GatedLinearFunction.apply(x, self.weight, self.delta, self.score, self.bias, self.active)
        return F.linear(x, self._forward_weight(), self.bias)


# Exact types only: other subclasses may not route their forward through `weight` (e.g.
# nn.MultiheadAttention's out_proj, whose weight the attention kernel reads directly).
GATED_TYPES: dict[type, type] = {cls.plain_type: cls for cls in (GatedConv2d, GatedConv2dSame, GatedLinear)}


def prime_gates(layers: list[GatedLayer], scores: list[float]) -> None:
    """Give each layer its gate state from scores read in one batch (one device sync per step
    instead of one per layer)."""
    for layer, value in zip(layers, scores):
        layer.prime_gate(value)


def set_gates_learning(scores: list[nn.Parameter], learning: bool) -> None:
    """Let the scores take gradients (the gates learn) or not (the gates are frozen). Frozen
    gates save work the gradient no longer asks for: on layers skip ⟨∂L/∂w, δ⟩, and off layers
    run as plain frozen layers, with no weight gradient at all (see ``_base_as_is``)."""
    for score in scores:
        if score.requires_grad != learning:
            score.requires_grad_(learning)
