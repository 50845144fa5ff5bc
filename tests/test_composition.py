"""An adapted model composes all its weights in one autograd node per forward pass, with the
gradients a layer composing its own weight gives, and nothing composed outlives its pass."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import taps
from taps.method.composition import PRECOMPOSED, ComposeOncePerForward
from tests.helpers import scramble, tiny_resnet


def _graph_nodes(loss: torch.Tensor, name: str) -> int:
    """How many nodes called ``name`` the backward graph of ``loss`` holds."""
    seen, todo, count = set(), [loss.grad_fn], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += node.name() == name
        todo.extend(next_node for next_node, _ in node.next_functions)
    return count


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, loss


def _adapted_pair():
    """A scrambled adapted ResNet-18 (half its gates off) and a copy whose layers compose one by one."""
    torch.manual_seed(0)
    model = taps.adapt(tiny_resnet()).train()
    scramble(model, off_every=2)
    one_by_one = copy.deepcopy(model)
    ComposeOncePerForward.uninstall(one_by_one)
    return model, one_by_one


def test_one_node_composes_every_layer_with_the_gradients_of_one_node_per_layer():
    model, one_by_one = _adapted_pair()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    out, grads, loss = _grads(model, x, y)
    ref_out, ref_grads, ref_loss = _grads(one_by_one, x, y)
    layers = len(taps.gated_layers(model))
    assert _graph_nodes(loss, "ComposeWeightsBackward") == 1
    assert _graph_nodes(ref_loss, "ComposeWeightsBackward") == layers == 20
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        if name.endswith(".delta") and not model.get_submodule(name[:-len(".delta")]).active:
            assert grad is None and ref_grads[name] is None, name  # off: δ takes no gradient at all
        else:
            assert torch.equal(grad, ref_grads[name]), name
    assert sum(g is not None and n.endswith(".score") for n, g in grads.items()) == layers


class _TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.extra, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x, use_extra: bool = True):
        x = self.body(x)
        return self.head(self.extra(x) if use_extra else x)


def test_nothing_composed_outlives_its_forward_pass():
    torch.manual_seed(0)
    model = taps.adapt(_TwoBranches())
    with torch.no_grad():
        for _, layer in taps.gated_layers(model):
            layer.delta.normal_()
    layers = [m for _, m in taps.gated_layers(model)]
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    F.cross_entropy(model(x, use_extra=False), y).backward()  # a layer the pass did not use
    assert not any(PRECOMPOSED in m.__dict__ for m in layers)
    assert model.extra.delta.grad is None and model.extra.score.grad is None
    assert model.body.delta.grad is not None

    with pytest.raises(RuntimeError):
        model(torch.randn(8, 5))  # fails in the first layer, after the weights were composed
    assert not any(PRECOMPOSED in m.__dict__ for m in layers)

    with torch.no_grad():  # no gradients: nothing composed ahead
        model(x)
        model.extra.delta.add_(1.0)
    assert not any(PRECOMPOSED in m.__dict__ for m in layers)
    # A layer called on its own composes its current weight, not one left from an earlier pass.
    assert torch.allclose(model.extra(x), F.linear(x, model.extra.weight + model.extra.delta, model.extra.bias))


def test_copies_compose_their_own_layers_and_merged_models_compose_nothing():
    model, _ = _adapted_pair()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    _, grads, _ = _grads(model, x, y)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        model.zero_grad(set_to_none=True)
        _, clone_grads, loss = _grads(clone, x, y)
        assert _graph_nodes(loss, "ComposeWeightsBackward") == 1
        assert all(p.grad is None for p in model.parameters())  # the copy's hooks reach its own layers
        assert all(torch.equal(clone_grads[n], g) for n, g in grads.items() if g is not None)
    for merged in (taps.merge(model), taps.merge(copy.deepcopy(model), inplace=True)):
        assert not merged._forward_pre_hooks and not merged._forward_hooks
