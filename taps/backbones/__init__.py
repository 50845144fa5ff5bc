"""Backbones: one entry point, ``create_backbone``, for timm models and torchvision models.

    model = create_backbone("efficientnet_lite0", num_classes=10)          # offline weights
    model = create_backbone("resnet50", 10, weights="hub")                # online users
    model = create_backbone("resnet50", 10, checkpoint="resnet50.safetensors")
    model = create_backbone("tv_resnet18", 10, weights="none")            # random, on purpose

Any timm model name works; torchvision classification models take a ``tv_`` prefix.
Pretrained weights are never replaced silently by random ones: when they cannot be had,
``WeightsUnavailableError`` says which backbones have weights on this machine and how to get more.

The package: ``names`` (which names work, shared constants), ``weights`` (where pretrained
weights are), ``heads``, ``checkpoints`` (weights in files), ``create`` (``create_backbone``),
``catalogue`` (``list_backbones``) and ``devices`` (where training runs).
"""
from .catalogue import BackboneInfo, list_backbones
from .checkpoints import BUILD_KEY, save_backbone_checkpoint
from .create import create_backbone, input_normalization
from .devices import device_description, resolve_device
from .heads import zero_parameters
from .names import (DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, PRETRAINED_CLASSES, TV_PREFIX, WEIGHT_MODES,
                    check_backbone)

__all__ = [
    "DEFAULT_BACKBONE", "WEIGHT_MODES", "BackboneInfo", "create_backbone", "input_normalization",
    "list_backbones", "resolve_device", "device_description",
    "BUILD_KEY", "IMAGENET_MEAN", "IMAGENET_STD", "PRETRAINED_CLASSES", "TV_PREFIX", "check_backbone",
    "save_backbone_checkpoint", "zero_parameters",
]
