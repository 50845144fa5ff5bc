"""w = w̄ + I_τ(s)·δ for gated layers, as autograd sees it, with the straight-through gradient.

One autograd node composes the weights of any number of layers (``ComposeWeights``). An adapted
model composes all its layers in one node at the start of each forward pass
(``ComposeOncePerForward``, installed by ``taps.adapt``); a layer called on its own composes just
itself. One node per model rather than one per layer because a custom Function's Python forward
and backward cost tens of µs a call on CPU, whatever the layer's size: a DenseNet-121 training
step (120 gated layers, 64 px, 2 cores) cost 1.070× fine-tuning's with one node per layer and
1.039× with one (benchmarks/training_overhead.py).
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import nn

from . import tensor_layout

# Where a layer finds the weight its model composed for the current forward pass.
PRECOMPOSED = "_precomposed_weight"


class ComposeWeights(torch.autograd.Function):
    """w_i = w̄_i + I_τ(s_i)·δ_i for n layers, with the straight-through gradient for s_i.

    Inputs: the n gate states (bools), n scratch buffers (or None), then n w̄, n δ and n s.
    Backward: ∂L/∂δ_i = I_i·∂L/∂w_i and ∂L/∂s_i = ⟨∂L/∂w_i, δ_i⟩ (the gradient of w̄ + s·δ), so a
    layer that is off still learns whether to switch back on. The multiply is skipped: I is 0 or 1.
    """

    @staticmethod
    def forward(ctx, ons: tuple[bool, ...], scratches: Sequence["ComposeScratch | None"], *tensors):
        n = len(ons)
        weights, deltas = tensors[:n], tensors[n:2 * n]
        ctx.ons = ons
        ctx.save_for_backward(*deltas)
        ctx.set_materialize_grads(False)  # a layer the loss did not reach gets None, not zeros
        composed = []
        for on, scratch, weight, delta in zip(ons, scratches, weights, deltas):
            if not on:  # an off layer computes with w̄ itself: no copy (autograd returns it as a view)
                composed.append(weight)
            elif scratch is None:
                composed.append(weight + delta)
            else:
                composed.append(scratch.compose(ctx, weight, delta))
        return tuple(composed)

    @staticmethod
    def backward(ctx, *grad_ws):
        deltas = ctx.saved_tensors
        n = len(deltas)
        wants = ctx.needs_input_grad[2:]
        grads = [None] * (3 * n)  # ∂L/∂w̄ for all n, then ∂L/∂δ, then ∂L/∂s
        for i, (grad_w, delta, on) in enumerate(zip(grad_ws, deltas, ctx.ons)):
            if grad_w is None:
                continue
            # The base weight itself trains only in joint multi-task training (Eq. 4): ∂L/∂w̄ = ∂L/∂w.
            if wants[i]:
                grads[i] = grad_w
            # An off layer's δ gets no gradient at all (None, not zeros): the optimizer skips it,
            # so δ keeps its value, as the paper's I·∂L/∂w = 0 intends, without momentum drifting it.
            if on and wants[n + i]:
                grads[n + i] = grad_w
            if wants[2 * n + i]:  # ⟨∂L/∂w, δ⟩ in one pass without a weight-sized temporary
                grads[2 * n + i] = tensor_layout.dot(grad_w, delta).to(delta.dtype)
        return (None, None, *grads)


def compose_weights(layers: Sequence[nn.Module], scratches: Sequence["ComposeScratch | None"] | None = None
                    ) -> tuple[torch.Tensor, ...]:
    """w̄ + I·δ of each gated layer, differentiable in δ and s (and w̄ where it trains)."""
    scratches = scratches if scratches is not None else (None,) * len(layers)
    return ComposeWeights.apply(tuple(layer.active for layer in layers), scratches,
                                *[layer.weight for layer in layers], *[layer.delta for layer in layers],
                                *[layer.score for layer in layers])


class ComposeScratch:
    """A layer's reusable home for w̄ + δ during training.

    A fresh weight-sized tensor per layer per step costs more than the add itself on CPU: the
    allocator hands large blocks back to the OS, so every step page-faults them in again (ResNet-50:
    34 ms per step against 9.5 ms for the add into kept memory). Reuse is safe only once the graph
    that saved the previous composition is gone, so the buffer remembers (weakly) which backward
    node last wrote it, and a second forward before that backward gets a fresh tensor instead.
    """

    def __init__(self):
        self.buffer: torch.Tensor | None = None
        self.owner = lambda: None  # weak reference to the ctx of the graph using the buffer

    def __reduce__(self):  # copies and pickles start empty: the buffer is a cache, not state
        return (ComposeScratch, ())

    def compose(self, ctx, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        buf = self.buffer
        if self.owner() is not None:  # the previous graph still needs its composition
            return weight + delta
        if (buf is None or buf.shape != weight.shape or buf.stride() != weight.stride()
                or buf.dtype != weight.dtype or buf.device != weight.device):
            buf = self.buffer = torch.empty_like(weight)
        torch.add(weight, delta, out=buf)
        self.owner = weakref.ref(ctx)
        # A view, not the buffer: autograd attaches this step's graph to the view, and the shared
        # version counter makes any unforeseen overwrite an error at backward, never a wrong gradient.
        return buf.view_as(buf)


class ComposeOncePerForward:
    """Forward hooks of an adapted model: before its forward pass, compose the weights of all its
    gated layers in one autograd node and hand each layer its own; after it (even after an
    error), drop what a layer did not use, so nothing outlives the pass it was composed for.

    Only while gradients are recorded: without them a layer's composition is a plain add. A layer
    that recomputes its weight in the backward pass (``recompute_weights``), or runs as a frozen
    layer (``_base_as_is``), composes nothing here. A layer not in the list, or called a second
    time in one pass, composes its own weight, so a stale list costs speed, never correctness.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = list(layers)

    def before_forward(self, module: nn.Module, args) -> None:
        if not torch.is_grad_enabled():
            return
        layers = [m for m in self.layers if not (m.recompute or m._base_as_is())]
        if layers:
            for layer, weight in zip(layers, compose_weights(layers, [m.compose_scratch() for m in layers])):
                layer.__dict__[PRECOMPOSED] = weight

    def after_forward(self, module: nn.Module, args, output) -> None:
        for layer in self.layers:
            layer.__dict__.pop(PRECOMPOSED, None)

    @classmethod
    def install(cls, model: nn.Module, layers: Sequence[nn.Module]) -> None:
        hooks = cls(layers)
        model.register_forward_pre_hook(hooks.before_forward)
        model.register_forward_hook(hooks.after_forward, always_call=True)

    @classmethod
    def uninstall(cls, model: nn.Module) -> None:
        for registry in (model._forward_pre_hooks, model._forward_hooks):
            for key, hook in list(registry.items()):
                if isinstance(getattr(hook, "__self__", None), cls):
                    del registry[key]
                    model._forward_hooks_always_called.pop(key, None)
