"""Accuracy of a model on a split, with the backbone's input normalisation applied on the device:
what every epoch of training and every evaluation of a task pack measure."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


class Normalize(nn.Module):
    """(x − mean) / std per channel, on whatever device the images are."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def eval_loader(images, config, pin: bool) -> DataLoader:
    """Batches of a validation or test split in order (``config``: a TrainConfig)."""
    return DataLoader(images, batch_size=max(config.optim.batch_size, 64), shuffle=False,
                      num_workers=config.data.num_workers, pin_memory=pin)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype=None,
             normalize: nn.Module = nn.Identity()) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(normalize(images))
        correct += (logits.argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)
