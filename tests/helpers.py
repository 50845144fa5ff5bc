"""Small shared fixtures for tests: models in a known non-trivial TAPS state, an event recorder."""
import torch
import torchvision

import taps


def tiny_resnet(num_classes: int = 5) -> torch.nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.taps_backbone = "tv_resnet18"
    return model


@torch.no_grad()
def scramble(model: torch.nn.Module, off_every: int = 2, seed: int = 0) -> None:
    """Give an adapted model random deltas, BN statistics and head, and switch every
    ``off_every``-th layer off — the state a trained model is in."""
    g = torch.Generator().manual_seed(seed)
    for i, (_, layer) in enumerate(taps.gated_layers(model)):
        layer.delta.copy_(torch.randn(layer.delta.shape, generator=g) * 0.01)
        layer.score.fill_(0.05 if i % off_every == 0 else 0.3)
    for _, norm in taps.norm_layers(model):
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.copy_(torch.randn(norm.running_mean.shape, generator=g) * 0.1)
            norm.running_var.copy_(torch.rand(norm.running_var.shape, generator=g) + 0.5)
        if norm.weight is not None:
            norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=g))
    head = model.get_submodule(taps.find_head(model))
    head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.1)


class Recorder:
    """A trainer callback keeping every event it is given."""

    def __init__(self):
        self.start, self.steps, self.epochs = None, [], []

    def on_start(self, e):
        self.start = e

    def on_step(self, e):
        self.steps.append(e)

    def on_epoch(self, e):
        self.epochs.append(e)
