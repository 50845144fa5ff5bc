"""Turn any pretrained model into a TAPS model by replacing its layers (``adapt``)."""
from __future__ import annotations

import fnmatch

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .composition import ComposeOncePerForward
from .config import TAPSConfig
from .layers import GATED_TYPES, GatedLayer

NORM_TYPES = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def find_head(model: nn.Module) -> str:
    """Name of the classifier head: timm's metadata, else the last Linear in the model."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, dict) else None
    modules = dict(model.named_modules())
    if isinstance(name, str) and isinstance(modules.get(name), nn.Linear):
        return name
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot find a classifier head (no Linear layer); pass TAPSConfig(head=...)")
    return linears[-1]


def get_submodule_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = get_submodule_parent(model, name)
    setattr(parent, child, new)


def selected_layers(model: nn.Module, config: TAPSConfig, head: str) -> list[str]:
    """Names of the layers ``adapt`` gates, in model order (input to head)."""
    names = []
    for name, module in model.named_modules():
        if type(module) not in GATED_TYPES or name == head:
            continue
        if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            continue
        names.append(name)
    return names


def adapt(model: nn.Module, config: TAPSConfig | None = None) -> nn.Module:
    """Make ``model`` a TAPS model in place and return it.

    Every selected layer becomes a gated layer (frozen w̄ and bias, zero δ, one score); all other
    parameters are frozen except normalisation layers (when ``config.train_norms``) and the head.
    At step 0 the result computes exactly what ``model`` computed.
    """
    config = config or TAPSConfig()
    if any(isinstance(m, GatedLayer) for m in model.modules()):
        raise ValueError("model is already adapted (it holds gated layers)")
    head = config.head or find_head(model)
    names = selected_layers(model, config, head)
    if not names:
        raise ValueError(f"no layer matched include={config.include} exclude={config.exclude}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        layer = model.get_submodule(name)
        gated = GATED_TYPES[type(layer)].from_layer(layer, config.threshold, config.score_init)
        gated.recompute = bool(config.recompute_weights)
        replace_module(model, name, gated)
    if config.train_norms:
        for module in model.modules():
            if isinstance(module, NORM_TYPES):
                for p in module.parameters():
                    p.requires_grad_(True)
    for p in model.get_submodule(head).parameters():
        p.requires_grad_(True)
    model.taps_config = config
    model.taps_head = head
    # One autograd node composes every layer's weight per forward pass, not one node per layer.
    ComposeOncePerForward.install(model, [m for _, m in gated_layers(model)])
    return model


def gated_layers(model: nn.Module) -> list[tuple[str, GatedLayer]]:
    """(name, layer) of every gated layer, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GatedLayer)]


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NORM_TYPES)]


def head_name(model: nn.Module) -> str:
    return getattr(model, "taps_head", None) or find_head(model)


def set_threshold(model: nn.Module, threshold: float) -> None:
    for _, layer in gated_layers(model):
        layer.threshold = float(threshold)
