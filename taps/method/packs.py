"""Task packs: everything one task adds to the shared base, and nothing else.

A pack is a safetensors file (loading it can never run code) holding
  ``delta.<layer>``   the delta of every *active* gated layer,
  ``scores``          all L scores, in layer order,
  ``norm.<field>``    normalisation state of every norm layer, concatenated in model order
                      (weight, bias, running_mean, running_var, num_batches_tracked),
  ``head.<param>``    the task's classifier head,
and JSON metadata (backbone, TAPS config, layer and norm names, class names, λ, metrics).
Grouping the small tensors keeps the file within a few hundred bytes of its tensor payload.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from .adaptation import adapt, find_head, gated_layers, head_name, norm_layers, replace_module, selected_layers
from .config import TAPSConfig
from ..fileio import atomic_write
from .merging import merge
from .tensor_checks import check_tensors

PACK_FORMAT = 1
NORM_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class PackError(ValueError):
    """A task pack is unreadable or does not fit the model it is loaded into."""


@dataclass
class TaskPack:
    metadata: dict
    tensors: dict[str, torch.Tensor]

    @property
    def num_classes(self) -> int:
        return int(self.tensors["head.weight"].shape[0])

    @property
    def active_layers(self) -> list[str]:
        return [k[len("delta."):] for k in self.tensors if k.startswith("delta.")]

    def payload_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def backbone_name(model: nn.Module) -> str | None:
    name = getattr(model, "taps_backbone", None)
    if name:
        return name
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg.get("architecture") if isinstance(cfg, dict) else None


def base_fingerprint(model: nn.Module) -> str:
    """sha256 of the frozen weights of the gated layers: which base a pack was trained on."""
    return _fingerprint(gated_layers(model))


def _fingerprint(layers: list[tuple[str, nn.Module]]) -> str:
    digest = hashlib.sha256()
    for name, layer in layers:
        digest.update(name.encode())
        digest.update(layer.weight.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _norm_state(model: nn.Module) -> tuple[list[str], dict[str, list[torch.Tensor]]]:
    names, fields = [], {f: [] for f in NORM_FIELDS}
    for name, module in norm_layers(model):
        names.append(name)
        for f in NORM_FIELDS:
            t = getattr(module, f, None)
            if t is not None:
                fields[f].append(t.detach().reshape(-1))
    return names, fields


def pack_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    layers = gated_layers(model)
    tensors = {f"delta.{n}": m.delta.detach() for n, m in layers if m.active}
    tensors["scores"] = torch.stack([m.score.detach() for _, m in layers])
    _, fields = _norm_state(model)
    tensors.update({f"norm.{f}": torch.cat(ts) for f, ts in fields.items() if ts})
    head = model.get_submodule(head_name(model))
    tensors.update({f"head.{k}": v.detach() for k, v in head.state_dict().items()})
    return {k: v.cpu().contiguous() for k, v in tensors.items()}


def save_pack(model: nn.Module, path: str | os.PathLike, *, class_names: list[str] | None = None,
              lam: float | None = None, metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write the task pack of an adapted model; an interrupted save never leaves a half-written
    pack behind (the previous one stays valid)."""
    layers = gated_layers(model)
    if not layers:
        raise PackError("model has no gated layers; adapt and train it first")
    tensors = pack_tensors(model)
    config: TAPSConfig = getattr(model, "taps_config", TAPSConfig())
    meta = {
        "format": PACK_FORMAT,
        "backbone": backbone_name(model),
        "base_fingerprint": base_fingerprint(model),
        "config": config.to_dict(),
        "head": head_name(model),
        "layers": [n for n, _ in layers],
        "layer_shapes": [list(m.weight.shape) for _, m in layers],
        "norms": _norm_state(model)[0],
        "class_names": list(class_names) if class_names is not None else None,
        "lam": lam,
        "metrics": metrics or {},
        "extra": extra or {},
    }
    payload = save(tensors, metadata={"taps": json.dumps(meta, separators=(",", ":"))})
    return atomic_write(path, lambda fh: fh.write(payload))


def read_pack(path: str | os.PathLike) -> TaskPack:
    """Read a pack without a model (for listing and inspection)."""
    path = Path(path)
    if not path.is_file():
        raise PackError(f"task pack not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("taps")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PackError(f"{path} is not a readable safetensors task pack: {exc}") from exc
    if raw is None:
        raise PackError(f"{path} is a safetensors file but not a TAPS task pack (no 'taps' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PackError(f"{path}: corrupt task-pack metadata: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise PackError(f"{path}: task-pack format {found!r} is not supported (expected {PACK_FORMAT})")
    check_pack_contents(meta, tensors, str(path))
    return TaskPack(meta, tensors)


# Metadata a pack must have, and the type of each (checked before any of it is used).
_META_TYPES = {"layers": list, "layer_shapes": list, "norms": list, "head": str, "config": dict}


def check_pack_contents(meta: dict, tensors: dict[str, torch.Tensor], where: str) -> None:
    """A pack is whole before any model sees it: its metadata has the fields and types loading
    reads, its tensors are the ones a pack holds, shaped as its metadata says, of the right kind
    of dtype, and finite. Raises PackError naming ``where`` and the field or tensor."""
    for field, kind in _META_TYPES.items():
        if not isinstance(meta.get(field), kind):
            raise PackError(f"{where}: metadata field {field!r} must be a {kind.__name__}, "
                            f"got {type(meta.get(field)).__name__}")
    for field in ("extra", "metrics"):
        if not isinstance(meta.get(field, {}), dict):
            raise PackError(f"{where}: metadata field {field!r} must be a dict, got {type(meta[field]).__name__}")
    layers, shapes = meta["layers"], meta["layer_shapes"]
    if not all(isinstance(n, str) for n in layers + meta["norms"]) or len(set(layers)) != len(layers):
        raise PackError(f"{where}: metadata 'layers' and 'norms' must list distinct layer names")
    if len(shapes) != len(layers) or not all(
            isinstance(sh, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in sh)
            for sh in shapes):
        raise PackError(f"{where}: metadata 'layer_shapes' must give one shape per layer ({len(layers)}), "
                        f"got {len(shapes)}")
    # Meta-device tensors: shapes and dtypes to compare with, nothing allocated.
    like = {f"delta.{n}": torch.empty(sh, device="meta") for n, sh in zip(layers, shapes)}
    like["scores"] = torch.empty(len(layers), device="meta")
    unknown = sorted(k for k in tensors if k not in like and k not in ("head.weight", "head.bias")
                     and k not in {f"norm.{f}" for f in NORM_FIELDS})
    if unknown:
        raise PackError(f"{where}: tensors a task pack does not hold: {unknown[:5]}")
    for name in ("scores", "head.weight"):
        if name not in tensors:
            raise PackError(f"{where}: the pack has no {name!r} tensor")
    head = tensors["head.weight"]
    if head.ndim != 2:
        raise PackError(f"{where}: tensor 'head.weight' must be 2-D (classes × features), has shape {tuple(head.shape)}")
    like["head.weight"] = torch.empty(head.shape, device="meta")
    like["head.bias"] = torch.empty(head.shape[0], device="meta")
    for f in NORM_FIELDS:
        t = tensors.get(f"norm.{f}")
        if t is not None:  # one flat tensor of all norm layers; its length is checked against a model
            like[f"norm.{f}"] = torch.empty(t.numel(), device="meta",
                                            dtype=torch.int64 if f == "num_batches_tracked" else torch.float32)
    check_tensors(tensors, where, PackError, like=like)
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)
                              or len(names) != head.shape[0]):
        count = len(names) if isinstance(names, list) else type(names).__name__
        raise PackError(f"{where}: metadata 'class_names' must name the head's {head.shape[0]} classes, got {count}")


@dataclass
class BaseSignature:
    """What a pack must agree with to fit a base: computed once per base (hashing the weights
    is the expensive part), then any number of packs are checked against it."""
    backbone: str | None
    layers: list[str]
    layer_shapes: list[tuple[int, ...]]
    norms: list[str]
    norm_sizes: dict[str, int]
    head: str
    head_in_features: int | None
    fingerprint: str | None  # None: not computed (check_base=False)


def base_signature(model: nn.Module, config: TAPSConfig | None = None, *, fingerprint: bool = True) -> BaseSignature:
    """The signature of a base: an adapted model's own, or, with ``config``, that of a plain
    model as ``adapt(model, config)`` would gate it (nothing is changed or copied)."""
    if config is None:
        layers, head_ = gated_layers(model), head_name(model)
    else:
        head_ = config.head or find_head(model)
        layers = [(n, model.get_submodule(n)) for n in selected_layers(model, config, head_)]
    norm_names, fields = _norm_state(model)
    head = dict(model.named_modules()).get(head_)
    return BaseSignature(
        backbone=backbone_name(model), layers=[n for n, _ in layers],
        layer_shapes=[tuple(m.weight.shape) for _, m in layers], norms=norm_names,
        norm_sizes={f: sum(t.numel() for t in ts) for f, ts in fields.items()}, head=head_,
        head_in_features=head.in_features if isinstance(head, nn.Linear) else None,
        fingerprint=_fingerprint(layers) if fingerprint else None)


def check_fits(base: BaseSignature, pack: TaskPack, where: str = "task pack", check_base: bool = True) -> None:
    """Raise PackError naming the first way ``pack`` does not fit ``base``; touches nothing."""
    meta = pack.metadata
    ours, theirs = base.backbone, meta.get("backbone")
    prefix = f"{where}: pack for backbone {theirs!r} does not fit this model ({ours!r})"
    if ours and theirs and ours != theirs:
        raise PackError(f"{where}: pack was trained on backbone {theirs!r}, the model is {ours!r}")
    names = base.layers
    if names != meta["layers"]:
        missing = [n for n in meta["layers"] if n not in set(names)]
        unexpected = [n for n in names if n not in set(meta["layers"])]
        detail = (f"layers missing from the model: {missing[:5]}" if missing else
                  f"layers not in the pack: {unexpected[:5]}" if unexpected else "layer order differs")
        raise PackError(f"{prefix}: {len(meta['layers'])} gated layers in the pack, {len(names)} in the model; {detail}")
    for name, ours_shape, shape in zip(names, base.layer_shapes, meta["layer_shapes"]):
        delta = pack.tensors.get(f"delta.{name}")
        if tuple(ours_shape) != tuple(shape):
            raise PackError(f"{prefix}: layer {name!r} has shape {tuple(ours_shape)} in the model, "
                            f"{tuple(shape)} in the pack")
        if delta is not None and tuple(delta.shape) != tuple(ours_shape):
            raise PackError(f"{prefix}: the delta of layer {name!r} has shape {tuple(delta.shape)}, "
                            f"the layer {tuple(ours_shape)}")
    unknown = set(pack.active_layers) - set(names)
    if unknown:
        raise PackError(f"{prefix}: deltas for layers the model does not have: {sorted(unknown)[:5]}")
    if pack.tensors["scores"].shape != (len(names),):
        raise PackError(f"{prefix}: {pack.tensors['scores'].numel()} scores for {len(names)} layers")
    if base.norms != meta["norms"]:
        raise PackError(f"{prefix}: normalisation layers differ ({len(meta['norms'])} in the pack, "
                        f"{len(base.norms)} in the model)")
    for f, want in base.norm_sizes.items():
        have = pack.tensors.get(f"norm.{f}")
        if (have.numel() if have is not None else 0) != want:
            raise PackError(f"{prefix}: normalisation {f} holds {0 if have is None else have.numel()} values, "
                            f"the model needs {want}")
    if meta["head"] != base.head or base.head_in_features is None:
        raise PackError(f"{prefix}: no Linear head named {meta['head']!r} in the model")
    if pack.tensors["head.weight"].shape[1] != base.head_in_features:
        raise PackError(f"{prefix}: head takes {pack.tensors['head.weight'].shape[1]} features, "
                        f"the model gives {base.head_in_features}")
    if check_base and meta.get("base_fingerprint") not in (None, base.fingerprint):
        raise PackError(f"{where}: the model's base weights differ from those the pack was trained on "
                        "(pass check_base=False to load anyway)")


def load_pack(model: nn.Module, source: str | os.PathLike | TaskPack, *, check_base: bool = True) -> nn.Module:
    """Apply a task pack to ``model`` (a plain base is adapted first with the pack's config).

    Everything is checked before anything is written: on a mismatch the model is left as it was.
    """
    pack = source if isinstance(source, TaskPack) else read_pack(source)
    where = "task pack" if isinstance(source, TaskPack) else str(source)
    was_adapted = bool(gated_layers(model))
    if not was_adapted:
        _check_names_before_adapt(model, pack, where)
        try:
            adapt(model, TAPSConfig.from_dict({**pack.metadata["config"], "head": pack.metadata["head"]}))
        except ValueError as exc:
            raise PackError(f"{where}: cannot adapt the model with the pack's settings: {exc}") from exc
    try:
        check_fits(base_signature(model, fingerprint=check_base), pack, where, check_base)
    except PackError:
        if not was_adapted:
            _unadapt(model)
        raise
    _apply(model, pack)
    return model


def _check_names_before_adapt(model: nn.Module, pack: TaskPack, where: str) -> None:
    theirs, ours = pack.metadata.get("backbone"), backbone_name(model)
    if ours and theirs and ours != theirs:
        raise PackError(f"{where}: pack was trained on backbone {theirs!r}, the model is {ours!r}")
    _pack_head(model, pack, f"{where}: pack for backbone {theirs!r} does not fit this model ({ours!r})")


def _pack_head(model: nn.Module, pack: TaskPack, prefix: str) -> nn.Linear:
    name = pack.metadata["head"]
    head = dict(model.named_modules()).get(name)
    if not isinstance(head, nn.Linear):
        raise PackError(f"{prefix}: no Linear head named {name!r} in the model")
    return head


def _unadapt(model: nn.Module) -> None:
    """Undo a fresh ``adapt``: all deltas are still zero, so merging restores the base exactly."""
    merge(model, inplace=True)


def norm_slices(pack: TaskPack, norm_modules: list[tuple[str, nn.Module]]):
    """(module name, field, tensor) for every normalisation tensor of ``pack``, cut from the
    concatenated ``norm.<field>`` tensors and shaped like the module's own (views, no copies)."""
    offsets = {f: 0 for f in NORM_FIELDS}
    for name, module in norm_modules:
        for f in NORM_FIELDS:
            target = getattr(module, f, None)
            if target is None:
                continue
            n = target.numel()
            yield name, f, pack.tensors[f"norm.{f}"][offsets[f]:offsets[f] + n].view_as(target)
            offsets[f] += n


def pack_head(pack: TaskPack) -> nn.Linear:
    """The task's classifier head as a new Linear layer."""
    t = pack.tensors
    weight = t["head.weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0], bias="head.bias" in t, dtype=weight.dtype)
    head.load_state_dict({k[len("head."):]: v for k, v in t.items() if k.startswith("head.")}, strict=True)
    return head


@torch.no_grad()
def _apply(model: nn.Module, pack: TaskPack) -> None:
    t = pack.tensors
    for (name, layer), score in zip(gated_layers(model), t["scores"]):
        layer.score.copy_(score)
        delta = t.get(f"delta.{name}")
        layer.delta.copy_(delta if delta is not None else torch.zeros_like(layer.delta))
    modules = dict(model.named_modules())
    for name, field, value in norm_slices(pack, norm_layers(model)):
        getattr(modules[name], field).copy_(value)
    old = model.get_submodule(pack.metadata["head"])
    replace_module(model, pack.metadata["head"], pack_head(pack).to(old.weight.device, old.weight.dtype))
