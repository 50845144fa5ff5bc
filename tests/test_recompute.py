"""Recomputing w̄ + δ in the backward pass: the same values and gradients as the plain gated
layers, without keeping any weight-sized tensor for the backward pass."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

import taps
from taps.method.layers import GATED_TYPES
from tests.helpers import tiny_resnet

LAYERS = {
    "conv": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9)),
    "conv groups dilation no bias": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False),
                                     (2, 4, 8, 8)),
    "conv reflect padding": (lambda: nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), (2, 3, 7, 7)),
    "conv 'same' string padding": (lambda: nn.Conv2d(3, 5, 3, padding="same"), (2, 3, 7, 7)),
    "tf-style same conv": (lambda: Conv2dSame(3, 5, 3, stride=2), (2, 3, 9, 9)),
    "linear on tokens": (lambda: nn.Linear(5, 3), (2, 7, 5)),
}


def _run(plain: nn.Module, shape, recompute: bool, score: float, train_weight: bool = False):
    torch.manual_seed(1)
    layer = GATED_TYPES[type(plain)].from_layer(plain, threshold=0.1, score_init=score)
    layer.recompute = recompute
    with torch.no_grad():
        layer.delta.copy_(torch.randn_like(layer.delta) * 0.1)
    layer.weight.requires_grad_(train_weight)
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad, layer.delta.grad, layer.score.grad, layer.weight.grad


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("score", [0.5, 0.05])  # gate on, gate off
def test_recomputing_gives_the_plain_layers_values_and_gradients(name, score):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    plain = make()
    expected = _run(plain, shape, False, score)
    got = _run(plain, shape, True, score)
    for e, g, what in zip(expected, got, ("output", "∂L/∂x", "∂L/∂δ", "∂L/∂s", "∂L/∂w̄")):
        if e is None:
            assert g is None, what
        else:
            assert torch.allclose(e, g, atol=1e-5), what


def test_recomputing_trains_the_base_weight_in_joint_training():
    plain = nn.Conv2d(3, 4, 3, padding=1)
    expected = _run(plain, (2, 3, 6, 6), False, 0.5, train_weight=True)
    got = _run(plain, (2, 3, 6, 6), True, 0.5, train_weight=True)
    assert got[4] is not None and torch.allclose(expected[4], got[4], atol=1e-5)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes the forward pass keeps for backward beyond the model's own parameters."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
    return sum(seen.values()), loss


def test_a_recomputing_model_keeps_no_weight_copy_and_trains_identically():
    torch.manual_seed(0)
    models = {rc: taps.adapt(tiny_resnet(), taps.TAPSConfig(recompute_weights=rc)) for rc in (False, True)}
    models[True].load_state_dict(models[False].state_dict())
    for model in models.values():
        torch.manual_seed(2)
        for name, layer in taps.gated_layers(model):
            with torch.no_grad():
                layer.delta.copy_(torch.randn_like(layer.delta) * 0.01)
    x = torch.randn(2, 3, 32, 32)
    saved = {rc: _saved_bytes(m, x) for rc, m in models.items()}
    weights = sum(layer.delta.numel() * 4 for _, layer in taps.gated_layers(models[False]) if layer.active)
    # The plain model keeps every active layer's composed weight; the recomputing one none of it.
    assert saved[False][0] - saved[True][0] == weights
    for rc, (_, loss) in saved.items():
        loss.backward()
    for (name, a), (_, b) in zip(taps.gated_layers(models[False]), taps.gated_layers(models[True])):
        assert torch.allclose(a.delta.grad, b.delta.grad, atol=1e-6), name
        assert torch.allclose(a.score.grad, b.score.grad, atol=1e-6), name


def test_recomputing_under_cpu_autocast_matches_the_plain_layer():
    """Mixed precision (the GPU path, here on CPU): the op runs in bfloat16, gradients come back
    in the parameters' float32, as without recomputing."""
    plain = nn.Conv2d(4, 6, 3, padding=1)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(1)
        layer = GATED_TYPES[nn.Conv2d].from_layer(plain, 0.1, 0.5)
        layer.recompute = recompute
        with torch.no_grad():
            layer.delta.copy_(torch.randn_like(layer.delta) * 0.1)
        x = torch.randn(2, 4, 8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        assert layer.delta.grad.dtype == torch.float32
        grads.append((layer.delta.grad, layer.score.grad))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=2e-2, atol=1e-2)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=2e-2, atol=1e-2)


def test_training_config_switches_recomputing_on_and_keeps_resume_compatible():
    from taps.training.checkpoint import resume_key
    from taps.training.trainer import TrainConfig

    model = taps.adapt(tiny_resnet(), TrainConfig.from_flat(recompute_weights=True).taps)
    assert all(layer.recompute for _, layer in taps.gated_layers(model))
    assert not any(layer.recompute for _, layer in taps.gated_layers(taps.adapt(tiny_resnet())))
    # A run checkpointed without it can be resumed with it: the same gradients either way.
    assert resume_key(TrainConfig.from_flat(recompute_weights=True)) == resume_key(TrainConfig())
