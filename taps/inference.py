"""Use a trained task: base backbone + task pack → a merged plain model; evaluate it, or
classify images with it."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from .backbones import create_backbone, input_normalization, resolve_device
from .data import eval_transform, load_dataset
from .merging import merge
from .packs import PackError, TaskPack, load_pack, read_pack
from .trainer import Normalize, evaluate


def load_task_model(pack_path: str | Path, *, weights: str = "auto", checkpoint: str | None = None,
                    merged: bool = True) -> tuple[nn.Module, TaskPack]:
    """The base named in the pack with the pack applied; merged (plain layers) by default."""
    pack = read_pack(pack_path)
    backbone = pack.metadata.get("backbone")
    if not backbone:
        raise PackError(f"{pack_path}: the pack does not name its backbone; load it with taps.load_pack")
    model = create_backbone(backbone, pack.num_classes, weights, checkpoint=checkpoint)
    load_pack(model, pack)
    return (merge(model, inplace=True) if merged else model).eval(), pack


def _pack_dataset(pack: TaskPack, dataset: str | None, where) -> str:
    dataset = dataset or pack.metadata.get("extra", {}).get("dataset")
    if not dataset:
        raise PackError(f"{where}: the pack does not name its dataset; pass one")
    return dataset


def evaluate_pack(pack_path: str | Path, dataset: str | None = None, *, split: str = "test",
                  eval_subset: int | None = None, batch_size: int = 64, device: str = "auto",
                  data_root: str | None = None, weights: str = "auto",
                  checkpoint: str | None = None) -> dict:
    """Accuracy of a task pack on a dataset split (the pack's own dataset by default)."""
    model, pack = load_task_model(pack_path, weights=weights, checkpoint=checkpoint)
    dataset = _pack_dataset(pack, dataset, pack_path)
    # The trainer's own path: images in [0, 1], the backbone's normalisation on the device.
    data = load_dataset(dataset, resolution=int(pack.metadata.get("extra", {}).get("resolution", 224)),
                        test_subset=eval_subset, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment=False,
                        data_root=data_root)
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if len(data.classes) != pack.num_classes:
        raise PackError(f"{pack_path} has {pack.num_classes} classes, {dataset} has {len(data.classes)}")
    dev = resolve_device(device)
    images = getattr(data, split)
    accuracy = evaluate(model.to(dev), DataLoader(images, batch_size=batch_size), dev,
                        normalize=Normalize(*input_normalization(model)).to(dev))
    return {"dataset": dataset, "split": split, "images": len(images), "accuracy": accuracy}


@torch.no_grad()
def classify(model: nn.Module, pack: TaskPack, images: list[Image.Image], *, top_k: int = 5,
             dataset: str | None = None) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image, preprocessed as the pack's test split was
    (its dataset's evaluation transform at its resolution, the backbone's normalisation)."""
    extra = pack.metadata.get("extra", {})
    transform = eval_transform(_pack_dataset(pack, dataset, "this pack"), int(extra.get("resolution", 224)))
    device = next(model.parameters()).device
    batch = torch.stack([transform(img) for img in images]).to(device)
    was_training = model.training
    model.eval()
    probs = model(Normalize(*input_normalization(model)).to(device)(batch)).float().softmax(1)
    model.train(was_training)
    names = pack.metadata.get("class_names") or [str(i) for i in range(pack.num_classes)]
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]
