"""Channels-last weights, as the trainer keeps convolutions on CPU: the gated layers give the
values and gradients of the contiguous ones, and weight-sized work keeps the layout."""
import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from taps.method import tensor_layout
from taps.method.layers import GATED_TYPES

CL = torch.channels_last


@pytest.mark.parametrize("a_cl,b_cl", [(False, False), (True, False), (False, True), (True, True)])
def test_dot_is_the_sum_of_products_in_any_layout(a_cl, b_cl):
    torch.manual_seed(0)
    a, b = torch.randn(6, 4, 3, 3, dtype=torch.float64), torch.randn(6, 4, 3, 3, dtype=torch.float64)
    expected = (a * b).sum()
    a, b = (a.to(memory_format=CL) if a_cl else a), (b.to(memory_format=CL) if b_cl else b)
    assert torch.allclose(tensor_layout.dot(a, b), expected, rtol=1e-12)


def test_view_like_lays_a_flat_buffer_out_as_the_weight():
    weight = torch.randn(6, 4, 3, 3).to(memory_format=CL)
    buffer = torch.full((500,), float("nan"))
    view = tensor_layout.view_like(buffer, weight)
    assert view.shape == weight.shape and view.stride() == weight.stride()
    view.copy_(weight)
    assert torch.equal(view, weight) and view.data_ptr() == buffer.data_ptr()
    assert torch.isnan(buffer[weight.numel():]).all()  # nothing past the weight is touched
    assert tensor_layout.view_like(buffer, torch.randn(5, 3)).shape == (5, 3)


def _conv_grads(make, channels_last: bool, recompute: bool, score: float):
    torch.manual_seed(1)
    layer = GATED_TYPES[type(make())].from_layer(make(), threshold=0.1, score_init=score)
    layer.recompute = recompute
    with torch.no_grad():
        layer.delta.copy_(torch.randn_like(layer.delta) * 0.1)
    x = torch.randn(2, 4, 9, 9)
    if channels_last:
        layer, x = layer.to(memory_format=CL), x.to(memory_format=CL)
    x.requires_grad_(True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return layer, (y.detach(), x.grad, layer.delta.grad, layer.score.grad)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(4, 6, 3, padding=1),
                                  lambda: Conv2dSame(4, 6, 3, stride=2)], ids=["conv", "tf-same conv"])
@pytest.mark.parametrize("recompute", [False, True], ids=["kept", "recomputed"])
@pytest.mark.parametrize("score", [0.5, 0.05], ids=["on", "off"])
def test_channels_last_gated_conv_gives_the_contiguous_values_and_gradients(make, recompute, score):
    torch.manual_seed(0)
    _, expected = _conv_grads(make, False, recompute, score)
    layer, got = _conv_grads(make, True, recompute, score)
    for e, g, what in zip(expected, got, ("output", "∂L/∂x", "∂L/∂δ", "∂L/∂s")):
        if e is None:
            assert g is None, what
        else:
            assert torch.allclose(e, g, atol=1e-5), what
    assert tensor_layout.is_channels_last(layer.delta)
    if score > 0.1 and not recompute:  # the kept composition is laid out as the weight, for the fast conv
        assert layer._compose_scratch.buffer.stride() == layer.weight.stride()


def test_composition_buffer_follows_the_layer_into_channels_last():
    """A model moved to channels-last after a step (as the trainer does after building it) gets a
    new buffer in the new layout, not its old contiguous one."""
    layer, _ = _conv_grads(lambda: nn.Conv2d(4, 6, 3, padding=1), False, False, 0.5)
    assert layer._compose_scratch.buffer.is_contiguous()
    layer = layer.to(memory_format=CL)
    layer.delta.grad = layer.score.grad = None
    x = torch.randn(2, 4, 9, 9).to(memory_format=CL)
    layer(x).sum().backward()
    assert layer._compose_scratch.buffer.stride() == layer.weight.stride() != (54, 9, 3, 1)


def test_a_pack_from_a_channels_last_model_fits_a_contiguous_base_and_predicts_the_same(tmp_path):
    """The trainer saves packs from channels-last models; users load them into fresh models."""
    import taps
    from taps.method.packs import base_fingerprint
    from tests.helpers import scramble, tiny_resnet

    torch.manual_seed(0)
    trained = taps.adapt(tiny_resnet())
    torch.manual_seed(0)
    fresh = taps.adapt(tiny_resnet())  # the same base, contiguous, with nothing learned
    scramble(trained)
    trained = trained.to(memory_format=CL)
    assert any(tensor_layout.is_channels_last(layer.weight) for _, layer in taps.gated_layers(trained))
    assert base_fingerprint(trained) == base_fingerprint(fresh)
    path = taps.save_pack(trained, tmp_path / "task.safetensors")
    taps.load_pack(fresh, path)
    x = torch.randn(3, 3, 32, 32)
    trained.eval(), fresh.eval()
    assert torch.allclose(trained(x), fresh(x), atol=1e-5)
