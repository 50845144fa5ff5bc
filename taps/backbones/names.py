"""Backbone names: any timm model, torchvision classification models behind a ``tv_`` prefix,
the backbones this project tests, and the constants every backbone module shares."""
from __future__ import annotations

import difflib
import functools

import timm
import torchvision

from ..errors import UnknownBackboneError

DEFAULT_BACKBONE = "efficientnet_lite0"
WEIGHT_MODES = ("auto", "package", "hub", "none")
TV_PREFIX = "tv_"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_CLASSES = 1000  # every pretrained head here is an ImageNet-1k head

# The backbones list_backbones() reports on: those this project tests and documents.
LISTED = {
    "efficientnet_lite0": "EfficientNet-Lite",
    "efficientnet_lite1": "EfficientNet-Lite",
    "efficientnet_lite2": "EfficientNet-Lite",
    "resnet18": "ResNet",
    "resnet50": "ResNet",
    "densenet121": "DenseNet",
    "vit_small_patch16_224": "ViT",
    "convnext_tiny": "ConvNeXt",
    "tv_resnet18": "ResNet (torchvision)",
    "tv_resnet50": "ResNet (torchvision)",
}


def tv_name(name: str) -> str | None:
    return name[len(TV_PREFIX):] if name.startswith(TV_PREFIX) else None


@functools.lru_cache(maxsize=1)
def tv_models() -> tuple[str, ...]:
    # classification models only: detection/segmentation/video models are no backbones here
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_backbone(name: str) -> None:
    """Raise UnknownBackboneError (with close matches) unless ``name`` can be created."""
    tv = tv_name(name)
    if (tv in tv_models()) if tv is not None else timm.is_model(name):
        return
    candidates = list(dict.fromkeys([*LISTED, *timm.list_models(), *(TV_PREFIX + n for n in tv_models())]))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone '{name}'.{hint} Call taps.backbones.list_backbones() for the tested "
        f"backbones; any timm model name (timm.list_models()) works, and torchvision "
        f"classification models with a '{TV_PREFIX}' prefix (e.g. 'tv_resnet18').")
