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
from .method.merging import merge
from .method.packs import PackError, TaskPack, load_pack, read_pack
from .training.evaluation import Normalize, evaluate


def load_task_model(pack_path: str | Path, *, weights: str = "auto", checkpoint: str | None = None,
                    merged: bool = True) -> tuple[nn.Module, TaskPack]:
    """The base named in the pack with the pack applied; merged (plain layers) by default."""
    pack = read_pack(pack_path)
    backbone = pack.metadata.get("backbone")
    if not backbone:
        raise PackError(f"{pack_path}: the pack does not name its backbone; load it with taps.load_pack")
    if checkpoint is None and weights == "auto":
        checkpoint = base_checkpoint(pack_path, pack)
    model = create_backbone(backbone, pack.num_classes, weights, checkpoint=checkpoint)
    load_pack(model, pack)
    return (merge(model, inplace=True) if merged else model).eval(), pack


def base_checkpoint(pack_path: str | Path, pack: TaskPack) -> str | None:
    """The base a pack needs when it is not the pretrained one: a joint run's packs name the
    trained shared base saved beside them."""
    name = pack.metadata.get("extra", {}).get("base")
    if not name:
        return None
    path = Path(pack_path).parent / name
    if not path.is_file():
        raise PackError(f"{pack_path} was trained with the base {name}, which should be beside it: {path} is missing")
    return str(path)


def evaluate_pack(pack_path: str | Path, dataset: str | None = None, *, split: str = "test",
                  eval_subset: int | None = None, batch_size: int = 64, device: str = "auto",
                  data_root: str | None = None, weights: str = "auto",
                  checkpoint: str | None = None) -> dict:
    """Accuracy of a task pack on a dataset split (the pack's own dataset by default)."""
    model, pack = load_task_model(pack_path, weights=weights, checkpoint=checkpoint)
    return evaluate_on(model, pack.metadata, dataset, split=split, eval_subset=eval_subset,
                       batch_size=batch_size, device=device, data_root=data_root, where=str(pack_path))


def evaluate_on(model: nn.Module, metadata: dict, dataset: str | None = None, *, split: str = "test",
                eval_subset: int | None = None, batch_size: int = 64, device: str = "auto",
                data_root: str | None = None, where: str = "this task") -> dict:
    """Accuracy of a task's model (described by its pack ``metadata``: dataset, resolution,
    classes) on a split, through the trainer's own path: images in [0, 1], the backbone's
    normalisation on the device."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    dataset = dataset or metadata.get("extra", {}).get("dataset")
    if not dataset:
        raise PackError(f"{where}: the pack does not name its dataset; pass one")
    data = load_dataset(dataset, resolution=int(metadata.get("extra", {}).get("resolution", 224)),
                        test_subset=eval_subset, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment=False,
                        data_root=data_root)
    classes = metadata.get("class_names")
    if classes is not None and len(data.classes) != len(classes):
        raise PackError(f"{where} has {len(classes)} classes, {dataset} has {len(data.classes)}")
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
    dataset = dataset or extra.get("dataset")
    if not dataset:
        raise PackError("this pack does not name its dataset; pass one")
    transform = eval_transform(dataset, int(extra.get("resolution", 224)))
    device = next(model.parameters()).device
    batch = torch.stack([transform(img) for img in images]).to(device)
    was_training = model.training
    model.eval()
    probs = model(Normalize(*input_normalization(model)).to(device)(batch)).float().softmax(1)
    model.train(was_training)
    names = pack.metadata.get("class_names") or [str(i) for i in range(pack.num_classes)]
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]
