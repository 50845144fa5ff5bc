"""Gated convolution and linear layers that recompute w̄ + δ in the backward pass.

The plain gated layers hand ``conv(x, w̄ + δ)`` to autograd, which keeps every active layer's
composed weight until the backward pass: one weight-sized copy of the whole network on top of
the w̄ and δ TAPS must hold anyway. These functions keep only x, w̄ and δ and compose w̄ + δ
again, into one scratch buffer the size of the largest layer, when the gradient needs it — the
gradient checkpointing trade (one more add per active layer per step) applied to the weights.
Gradients are those of the plain gated layers: ∂L/∂δ = I·∂L/∂w, ∂L/∂s = ⟨∂L/∂w, δ⟩, and
∂L/∂w̄ = ∂L/∂w when w̄ trains (joint training).
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from . import tensor_layout

_scratch = threading.local()  # per thread: CUDA's backward runs on its own thread


def compose_in_scratch(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """w̄ + δ written into the shared scratch buffer, valid until the next call (the forward or
    backward pass of one layer uses it and is done before the next layer's starts)."""
    key = (weight.device, weight.dtype)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < weight.numel():
        buf = buffers[key] = torch.empty(weight.numel(), dtype=weight.dtype, device=weight.device)
    return torch.add(weight, delta, out=tensor_layout.view_like(buf, weight))


def _weight_grads(ctx, grad_w, delta):
    """(∂L/∂w̄, ∂L/∂δ, ∂L/∂s) from ∂L/∂w, as ComposeWeights gives them."""
    grad_w = grad_w.to(delta.dtype)
    grad_weight = grad_w if ctx.needs_input_grad[1] else None
    grad_delta = grad_w if ctx.needs_input_grad[2] and ctx.on else None
    grad_score = (tensor_layout.dot(grad_w, delta).to(delta.dtype)
                  if ctx.needs_input_grad[3] else None)
    return grad_weight, grad_delta, grad_score


class _GatedOp(torch.autograd.Function):
    """Shared forward: compose (if the gate is on), run the op, save what recomputing needs."""

    @staticmethod
    def _run(x, weight, bias, ctx):  # the layer's own op, e.g. a convolution
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx, x, weight, delta, score, bias, on: bool, *op_args):
        ctx.on = on
        ctx.op_args = op_args
        ctx.has_bias = bias is not None
        w = compose_in_scratch(weight, delta) if ctx.on else weight
        y = cls._run(x, w, bias, op_args)
        ctx.compute_dtype = y.dtype  # under autocast the op ran in lower precision
        ctx.save_for_backward(x, weight, delta)
        return y

    @staticmethod
    def _recomposed(ctx, weight, delta):
        w = compose_in_scratch(weight, delta) if ctx.on else weight
        return w.to(ctx.compute_dtype)


class GatedConv2dFunction(_GatedOp):
    """conv2d(x, w̄ + I·δ, bias, stride, padding, dilation, groups) without keeping w̄ + δ."""

    @staticmethod
    def _run(x, w, bias, op_args):
        return F.conv2d(x, w, bias, *op_args)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, delta = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.op_args
        w = GatedConv2dFunction._recomposed(ctx, weight, delta)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_y, x.to(ctx.compute_dtype), w, [w.shape[0]] if ctx.has_bias else None,
            stride, padding, dilation, False, [0] * len(stride), groups,
            [ctx.needs_input_grad[0], True, ctx.has_bias and ctx.needs_input_grad[4]])
        grads = _weight_grads(ctx, grad_w, delta)
        grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        return (grad_x.to(x.dtype) if grad_x is not None else None, *grads, grad_b) + (None,) * (1 + len(ctx.op_args))


class GatedLinearFunction(_GatedOp):
    """linear(x, w̄ + I·δ, bias) without keeping w̄ + δ."""

    @staticmethod
    def _run(x, w, bias, op_args):
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, delta = ctx.saved_tensors
        w = GatedLinearFunction._recomposed(ctx, weight, delta)
        grad_y = grad_y.to(ctx.compute_dtype)
        grad_x = (grad_y @ w).to(x.dtype) if ctx.needs_input_grad[0] else None
        flat_y = grad_y.reshape(-1, grad_y.shape[-1])
        grad_w = flat_y.t() @ x.to(ctx.compute_dtype).reshape(-1, x.shape[-1])
        grads = _weight_grads(ctx, grad_w, delta)
        grad_b = flat_y.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[4] else None
        return (grad_x, *grads, grad_b, None)
