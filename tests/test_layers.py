"""The gated layer: forward w̄ + I·δ, straight-through backward."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import taps
from taps.method.layers import GatedConv2d, GatedLinear


def _gated_linear(score: float) -> GatedLinear:
    layer = GatedLinear.from_layer(nn.Linear(6, 4), threshold=0.1, score_init=score)
    with torch.no_grad():
        layer.delta.copy_(torch.randn_like(layer.delta))
    return layer


def _hand_gradient_wrt_weight(layer, x, target):
    """∂L/∂w at w = w̄ + I·δ, computed without the gated layer."""
    w = (layer.weight + (layer.delta if layer.active else 0)).detach().requires_grad_(True)
    loss = F.cross_entropy(F.linear(x, w, layer.bias), target)
    (grad_w,) = torch.autograd.grad(loss, w)
    return loss, grad_w


def test_forward_is_base_plus_gated_delta():
    x = torch.randn(3, 6)
    on, off = _gated_linear(0.5), _gated_linear(0.05)
    assert torch.allclose(on(x), F.linear(x, on.weight + on.delta, on.bias))
    assert torch.equal(off(x), F.linear(x, off.weight, off.bias))


def test_score_gradient_is_inner_product_of_weight_gradient_and_delta():
    x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
    layer = _gated_linear(0.5)
    F.cross_entropy(layer(x), target).backward()
    _, grad_w = _hand_gradient_wrt_weight(layer, x, target)
    assert torch.allclose(layer.score.grad, (grad_w * layer.delta).sum(), atol=1e-6)
    assert torch.allclose(layer.delta.grad, grad_w, atol=1e-6)
    assert layer.weight.grad is None and layer.bias.grad is None  # w̄ and bias frozen


def test_gated_off_layer_freezes_delta_but_score_still_learns():
    x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
    layer = _gated_linear(0.05)
    F.cross_entropy(layer(x), target).backward()
    _, grad_w = _hand_gradient_wrt_weight(layer, x, target)
    assert layer.delta.grad is None  # I·∂L/∂w = 0, given as no gradient: the optimizer skips δ
    expected = (grad_w * layer.delta).sum()
    assert expected.abs() > 1e-4
    assert torch.allclose(layer.score.grad, expected, atol=1e-6)


def test_fused_gate_matches_papers_straight_through_formulation():
    """Algorithm 1 of the paper, w = w̄ + hard_gate(s)·δ, gives the same gradients."""
    x, target = torch.randn(8, 3, 9, 9), torch.randint(0, 4, (8,))
    for score in (0.5, 0.05):
        conv = GatedConv2d.from_layer(nn.Conv2d(3, 4, 3, padding=1), 0.1, score)
        with torch.no_grad():
            conv.delta.copy_(torch.randn_like(conv.delta) * 0.1)
        F.cross_entropy(conv(x).mean((2, 3)), target).backward()
        s = conv.score.detach().clone().requires_grad_(True)
        d = conv.delta.detach().clone().requires_grad_(True)
        w = conv.weight + taps.hard_gate(s, 0.1) * d
        F.cross_entropy(F.conv2d(x, w, conv.bias, padding=1).mean((2, 3)), target).backward()
        assert torch.allclose(conv.score.grad, s.grad, atol=1e-6)
        fused_delta_grad = conv.delta.grad if conv.delta.grad is not None else torch.zeros_like(d)
        assert torch.allclose(fused_delta_grad, d.grad, atol=1e-6)


def test_layer_switches_back_on_when_its_score_crosses_the_threshold():
    layer = _gated_linear(0.05)
    assert not layer.active
    with torch.no_grad():
        layer.score.fill_(0.1)  # s ≥ τ is on
    assert layer.active


def test_shared_weight_gradient_in_joint_training_is_the_weight_gradient():
    """Joint MTL (Eq. 4) trains w̄ too: ∂L/∂w̄ = ∂L/∂w, whether the gate is on or off."""
    x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
    for score in (0.5, 0.05):
        layer = _gated_linear(score)
        layer.weight.requires_grad_(True)
        F.cross_entropy(layer(x), target).backward()
        _, grad_w = _hand_gradient_wrt_weight(layer, x, target)
        assert torch.allclose(layer.weight.grad, grad_w, atol=1e-6)


def test_off_layer_delta_stays_put_under_momentum():
    """A layer that switches off keeps its δ exactly: no gradient reaches it, so SGD's momentum
    from when it was on cannot drift it (the skipped work is also skipped optimizer work)."""
    x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
    layer = _gated_linear(0.5)
    opt = torch.optim.SGD([layer.delta], lr=0.1, momentum=0.9)
    for _ in range(3):  # on: δ learns and momentum builds up
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(layer(x), target).backward()
        opt.step()
    with torch.no_grad():
        layer.score.fill_(0.05)
    kept = layer.delta.detach().clone()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(layer(x), target).backward()
        opt.step()
    assert torch.equal(layer.delta.detach(), kept)


def _linear_grads(layer, x, target):
    """(loss, ∂L/∂δ, ∂L/∂s) by the hand formula, for comparing against the layer's autograd."""
    _, grad_w = _hand_gradient_wrt_weight(layer, x, target)
    return grad_w, (grad_w * layer.delta).sum()


def test_training_steps_reuse_one_composition_buffer_and_stay_exact():
    """Step after step the layer composes into the same memory, with values and gradients that
    follow the updated δ (the buffer is a cache: stale contents would show here)."""
    layer = _gated_linear(0.5)
    optimizer = torch.optim.SGD([{"params": [layer.delta], "lr": 0.5}, {"params": [layer.score], "lr": 1e-3}])
    pointers = []
    for step in range(3):
        x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
        grad_w, grad_s = _linear_grads(layer, x, target)
        out = layer(x)
        assert torch.allclose(out, F.linear(x, layer.weight + layer.delta, layer.bias), atol=1e-6)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(out, target).backward()
        assert torch.allclose(layer.delta.grad, grad_w, atol=1e-6)
        assert torch.allclose(layer.score.grad, grad_s, atol=1e-6)
        optimizer.step()
        pointers.append(layer._compose_scratch.buffer.data_ptr())
    assert layer.active and len(set(pointers)) == 1


def test_two_forwards_before_one_backward_get_their_own_composition():
    """Gradient accumulation across two live graphs: the second forward must not overwrite the
    weight the first graph saved, so both backward passes give the hand-computed gradients."""
    layer = _gated_linear(0.5)
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    t1, t2 = torch.randint(0, 4, (8,)), torch.randint(0, 4, (8,))
    g1, s1 = _linear_grads(layer, x1, t1)
    g2, s2 = _linear_grads(layer, x2, t2)
    loss1 = F.cross_entropy(layer(x1), t1)
    loss2 = F.cross_entropy(layer(x2), t2)
    (loss1 + loss2).backward()
    assert torch.allclose(layer.delta.grad, g1 + g2, atol=1e-6)
    assert torch.allclose(layer.score.grad, s1 + s2, atol=1e-6)


def test_retained_graph_backpropagates_twice_and_copies_start_without_the_buffer():
    import copy
    import pickle

    layer = _gated_linear(0.5)
    x, target = torch.randn(8, 6), torch.randint(0, 4, (8,))
    grad_w, _ = _linear_grads(layer, x, target)
    loss = F.cross_entropy(layer(x), target)
    loss.backward(retain_graph=True)
    layer(torch.randn(8, 6)).sum()  # a forward while the retained graph still holds the buffer
    loss.backward()
    assert torch.allclose(layer.delta.grad, 2 * grad_w, atol=1e-6)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._compose_scratch.buffer is None
        assert torch.allclose(clone(x), layer(x))
    assert "_compose_scratch" not in layer.to_plain().__dict__


def test_composition_buffer_follows_the_layer_to_another_dtype():
    layer = _gated_linear(0.5)
    x = torch.randn(8, 6)
    layer(x).sum().backward()
    layer = layer.double()
    out = layer(x.double())
    assert out.dtype == torch.float64 and layer._compose_scratch.buffer.dtype == torch.float64
    assert torch.allclose(out, F.linear(x.double(), layer.weight + layer.delta, layer.bias))


def test_primed_gates_are_used_until_the_score_or_threshold_changes(monkeypatch):
    """The trainer primes gate states from its one batched score read per step, so a forward
    pass on a GPU does not sync once per layer; any change of the score or τ re-reads it."""
    from taps.method.layers import prime_gates

    layer = _gated_linear(0.5)
    x = torch.randn(3, 6)
    prime_gates([layer], [0.05])  # a primed state wins while nothing changed (here: a wrong one)
    assert not layer.active and torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.threshold = 0.2  # τ changed: read again
    assert layer.active
    prime_gates([layer], [0.5])
    with torch.no_grad():
        layer.score.fill_(0.05)  # an in-place update (optimizer step, projection): read again
    assert not layer.active
    prime_gates([layer], [0.05])
    layer.score = nn.Parameter(torch.tensor(0.5))  # another score tensor (task switch): read again
    assert layer.active
    # Primed and unchanged: the forward pass reads no score at all.
    prime_gates([layer], [0.5])
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: (_ for _ in ()).throw(AssertionError("score read")))
    out = layer(x)
    monkeypatch.undo()
    assert torch.allclose(out, F.linear(x, layer.weight + layer.delta, layer.bias))


@pytest.mark.parametrize("recompute", [False, True])
def test_frozen_gates_give_the_same_gradients_and_skip_what_is_not_wanted(recompute):
    """With the scores frozen (after the gate freeze), an on layer's δ gets the very gradient it
    got while the gates learned, and an off layer runs on w̄ untracked: its convolution has no
    weight input to differentiate, so the weight-gradient work is skipped."""
    from taps.method.layers import set_gates_learning

    torch.manual_seed(0)
    x = torch.randn(4, 3, 9, 9, requires_grad=True)
    layers = [GatedConv2d.from_layer(nn.Conv2d(3, 3, 3, padding=1), 0.1, score) for score in (0.5, 0.05)]
    for layer in layers:
        layer.recompute = recompute
        with torch.no_grad():
            layer.delta.copy_(torch.randn_like(layer.delta) * 0.1)

    def grads():
        x.grad = None
        for layer in layers:
            layer.delta.grad = layer.score.grad = None
        layers[1](layers[0](x)).square().sum().backward()
        return x.grad.clone(), [(l.delta.grad, l.score.grad) for l in layers]

    x_learning, learning = grads()
    set_gates_learning([l.score for l in layers], False)
    x_frozen, frozen = grads()
    assert torch.equal(x_frozen, x_learning)
    assert torch.equal(frozen[0][0], learning[0][0])  # the on layer's ∂L/∂δ, unchanged
    assert learning[0][1] is not None and learning[1][1] is not None
    assert frozen[0][1] is None and frozen[1][1] is None  # no ⟨∂L/∂w, δ⟩ computed
    assert learning[1][0] is None and frozen[1][0] is None  # an off δ never gets a gradient
    # The off layer's convolution sees w̄ itself, a tensor outside the graph.
    out = layers[1](x)
    assert out.grad_fn.name() == "ConvolutionBackward0"
    assert out.grad_fn.next_functions[1][0] is None  # weight: nothing to backpropagate into
    assert torch.equal(out, F.conv2d(x, layers[1].weight, layers[1].bias, padding=1))
    set_gates_learning([l.score for l in layers], True)
    assert grads()[1][1][1] is not None  # learning again: the off layer's score has its gradient back
