"""Incremental multi-task inference (paper §4.1): one frozen base, any number of task packs.

    mt = MultiTaskModel.from_packs({"fashion": "fashion.safetensors", "digits": "digits.safetensors"})
    logits = mt(images, task="digits")      # images normalised as the backbone expects
    mt.report()                             # per task and in total: layers, parameters, bytes

Switching tasks never reloads or copies the base. When a task is added, the weights of its
task-specific layers are merged once (w̄ + δ: exactly the memory the delta itself takes) and its
normalisation state and head are kept as they are. Switching to a task then only swaps tensor
references in the base's layers, so a batch runs through plain layers at the backbone's own
speed, and no task can ever change another task's weights.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .adaptation import find_head, norm_layers, replace_module
from ..backbones import create_backbone, input_normalization
from .config import TAPSConfig
from .packs import BaseSignature, PackError, TaskPack, base_signature, check_fits, norm_slices, pack_head, read_pack
from .stats import TaskStats, pack_stats, parameter_multiplier

__all__ = ["MultiTaskModel", "MultiTaskReport"]


@dataclass
class _Task:
    name: str
    weights: dict[str, torch.Tensor]            # task-specific layer → merged weight w̄ + δ
    norms: dict[str, dict[str, torch.Tensor]]   # norm layer → field → tensor
    head: nn.Linear
    stats: TaskStats
    metadata: dict
    pack_bytes: int                             # on disk (or the tensors' bytes for an in-memory pack)


@dataclass
class MultiTaskReport:
    """What K tasks cost on one base: the paper's Table 1 columns, and bytes on disk."""
    tasks: dict[str, TaskStats]
    base_params: int
    parameter_multiplier: float                 # (base + Σ additional) / base
    base_bytes: int                             # the shared base, stored once
    pack_bytes: dict[str, int] = field(default_factory=dict)
    finetuned_bytes: int = 0                    # K separately fine-tuned models instead

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + sum(self.pack_bytes.values())

    def rows(self) -> list[dict]:
        """One row per task plus a total row, ready for a table."""
        rows = [{"task": name, "task-specific layers": f"{s.active_layers}/{s.gated_layers}",
                 "% task-specific layers": s.task_specific_layers_pct, "% additional params": s.additional_params_pct,
                 "pack bytes": self.pack_bytes.get(name)} for name, s in self.tasks.items()]
        total_extra = sum(s.additional_params for s in self.tasks.values())
        rows.append({"task": "total", "task-specific layers": sum(s.active_layers for s in self.tasks.values()),
                     "% task-specific layers": None,
                     "% additional params": 100.0 * total_extra / max(self.base_params, 1),
                     "pack bytes": sum(self.pack_bytes.values())})
        return rows


class MultiTaskModel(nn.Module):
    """A plain base backbone serving every added task; ``forward(x, task)`` runs one task."""

    def __init__(self, base: nn.Module):
        super().__init__()
        if any(hasattr(m, "delta") for m in base.modules()):
            raise ValueError("MultiTaskModel takes the plain pretrained base, not an adapted model; "
                             "pass create_backbone(...) and add the task packs")
        self.base = base.eval().requires_grad_(False)
        self.head_name = find_head(base)
        self._tasks: dict[str, _Task] = {}
        self._signatures: dict[str, BaseSignature] = {}
        self.current: str | None = None
        self._snapshot_base()

    # ----------------------------------------------------------------- building
    @classmethod
    def from_packs(cls, packs: Mapping[str, str | os.PathLike | TaskPack] | Iterable[str | os.PathLike], *,
                   weights: str = "auto", checkpoint: str | None = None, device: str | torch.device = "cpu",
                   check_base: bool = True) -> "MultiTaskModel":
        """The base named in the packs (all must share it) with every pack added. ``packs`` maps
        task names to pack files; a plain list names each task after its file."""
        if not isinstance(packs, Mapping):
            packs = {Path(p).name.split(".")[0]: p for p in packs}
        loaded = {name: p if isinstance(p, TaskPack) else read_pack(p) for name, p in packs.items()}
        if not loaded:
            raise ValueError("from_packs needs at least one task pack")
        backbones = {p.metadata.get("backbone") for p in loaded.values()}
        if len(backbones) != 1 or None in backbones:
            raise PackError(f"task packs for one base must name one backbone, got {sorted(map(str, backbones))}")
        first = next(iter(loaded.values()))
        if checkpoint is None and weights == "auto":  # a joint run's packs name their trained base
            from ..inference import base_checkpoint

            bases = {base_checkpoint(p, loaded[n]) if not isinstance(p, TaskPack) else None for n, p in packs.items()}
            if len(bases) > 1:
                raise PackError(f"these packs were trained on different bases ({sorted(map(str, bases))}); "
                                "one MultiTaskModel serves packs of one base")
            checkpoint = bases.pop()
        base = create_backbone(backbones.pop(), first.num_classes, weights, checkpoint=checkpoint)
        model = cls(base.to(device))
        for name, pack in loaded.items():
            model.add_task(name, pack, check_base=check_base,
                           pack_bytes=_file_bytes(packs[name]) if not isinstance(packs[name], TaskPack) else None)
        return model

    def _snapshot_base(self) -> None:
        """References (not copies) to the base's own tensors, to restore them when no task is set."""
        modules = dict(self.base.named_modules())
        self._by_name = modules
        self._base_weights = {n: m.weight.data for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self._base_norms = {n: {f: getattr(m, f).data for f in ("weight", "bias", "running_mean", "running_var",
                                                                 "num_batches_tracked")
                                if getattr(m, f, None) is not None}
                            for n, m in norm_layers(self.base)}
        self._base_head = [modules[self.head_name]]  # in a list: not registered as a submodule twice

    def _signature(self, pack: TaskPack, fingerprint: bool) -> BaseSignature:
        """The base's signature under the pack's TAPS settings (which layers are gated), computed
        once per setting: hashing the base's weights is the expensive part."""
        config = {**pack.metadata.get("config", {}), "head": pack.metadata.get("head")}
        key = json.dumps(config, sort_keys=True) + str(fingerprint)
        if key not in self._signatures:
            try:
                taps_config = TAPSConfig.from_dict(config)
            except (TypeError, ValueError) as exc:
                raise PackError(f"the pack's TAPS settings are not readable: {exc}") from exc
            current = self.current
            self._activate(None)  # the signature is the base's own weights
            try:
                self._signatures[key] = base_signature(self.base, taps_config, fingerprint=fingerprint)
            except (AttributeError, ValueError) as exc:
                raise PackError(f"the pack's layers do not exist in this base: {exc}") from exc
            finally:
                self._activate(current)
        return self._signatures[key]

    @torch.no_grad()
    def add_task(self, name: str, pack: str | os.PathLike | TaskPack, *, check_base: bool = True,
                 pack_bytes: int | None = None) -> None:
        """Add a task from its pack (checked against the base first; nothing changes on a mismatch)."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already in the model; remove_task it first")
        where = str(pack) if not isinstance(pack, TaskPack) else f"task pack {name!r}"
        if not isinstance(pack, TaskPack):
            pack_bytes = pack_bytes if pack_bytes is not None else _file_bytes(pack)
            pack = read_pack(pack)
        check_fits(self._signature(pack, check_base), pack, where, check_base)
        weights = {}
        for layer in pack.active_layers:
            base_w = self._base_weights[layer]
            weights[layer] = base_w + pack.tensors[f"delta.{layer}"].to(base_w.device, base_w.dtype)
        norms: dict[str, dict[str, torch.Tensor]] = {}
        for norm, f, value in norm_slices(pack, norm_layers(self.base)):
            like = self._base_norms[norm][f]
            norms.setdefault(norm, {})[f] = value.to(like.device, like.dtype).clone()
        like = self._base_head[0].weight
        head = pack_head(pack).to(like.device, like.dtype).eval().requires_grad_(False)
        self._tasks[name] = _Task(name, weights, norms, head, pack_stats(pack, self.base_params), pack.metadata,
                                  pack_bytes if pack_bytes is not None else pack.payload_bytes())

    def remove_task(self, name: str) -> None:
        self._require(name)
        if self.current == name:
            self._activate(None)
        del self._tasks[name]

    # ----------------------------------------------------------------- running
    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def task_metadata(self, name: str) -> dict:
        return self._require(name).metadata

    def _require(self, name: str) -> _Task:
        if name not in self._tasks:
            raise KeyError(f"no task {name!r}; this model has {', '.join(self._tasks) or 'no tasks yet'}")
        return self._tasks[name]

    def set_task(self, name: str) -> None:
        """Make ``name`` the task the base computes (a few hundred reference swaps, no copies)."""
        self._require(name)
        if name != self.current:
            self._activate(name)

    def _activate(self, name: str | None) -> None:
        new = self._tasks[name] if name is not None else None
        old = self._tasks.get(self.current) if self.current is not None else None
        modules = self._by_name
        for layer in (old.weights if old else ()):
            if new is None or layer not in new.weights:
                modules[layer].weight.data = self._base_weights[layer]
        for layer, weight in (new.weights.items() if new else ()):
            modules[layer].weight.data = weight
        for norm, fields in (new.norms if new else self._base_norms).items():
            for f, value in fields.items():
                getattr(modules[norm], f).data = value
        replace_module(self.base, self.head_name, new.head if new else self._base_head[0])
        self.current = name

    def forward(self, x: torch.Tensor, task: str | None = None) -> torch.Tensor:
        if task is not None:
            self.set_task(task)
        if self.current is None:
            raise ValueError(f"say which task to run: forward(x, task=...) with one of {self.tasks}")
        return self.base(x)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        if mode:
            raise RuntimeError("MultiTaskModel is for inference; train a task with taps.training.trainer and add its pack")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` / ``.half()`` move the base and every task's tensors alike."""
        current = self.current
        self._activate(None)
        super()._apply(fn, recurse)
        self._snapshot_base()
        for task in self._tasks.values():
            task.weights = {k: fn(v) for k, v in task.weights.items()}
            task.norms = {n: {f: fn(v) for f, v in fs.items()} for n, fs in task.norms.items()}
            task.head._apply(fn)
        self._activate(current)
        return self

    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return input_normalization(self.base)

    def task_model(self, name: str) -> nn.Module:
        """A module computing one task (``view(x) == self(x, task=name)``), for code that takes a
        plain model, e.g. ``taps.inference.evaluate_on``."""
        self._require(name)
        return _TaskView(self, name)

    # ----------------------------------------------------------------- what it costs
    @property
    def base_params(self) -> int:
        head = self.head_name
        return sum(p.numel() for n, p in self.base.named_parameters()
                   if not (n == head or n.startswith(head + ".")))

    def report(self) -> MultiTaskReport:
        """Per task: layers and parameters it adds; in total: the parameter multiplier over the
        base (paper Table 1), and bytes on disk against K fine-tuned copies of the model."""
        if not self._tasks:
            raise ValueError("no tasks yet")
        head = self.head_name
        state = {k: v for k, v in self.base.state_dict().items() if not (k == head or k.startswith(head + "."))}
        base_bytes = sum(v.numel() * v.element_size() for v in state.values())
        heads = {n: sum(p.numel() * p.element_size() for p in t.head.parameters()) for n, t in self._tasks.items()}
        stats = {n: t.stats for n, t in self._tasks.items()}
        return MultiTaskReport(tasks=stats, base_params=self.base_params,
                               parameter_multiplier=parameter_multiplier(list(stats.values())),
                               base_bytes=base_bytes, pack_bytes={n: t.pack_bytes for n, t in self._tasks.items()},
                               finetuned_bytes=sum(base_bytes + heads[n] for n in self._tasks))


class _TaskView(nn.Module):
    def __init__(self, model: MultiTaskModel, task: str):
        super().__init__()
        self.model, self.task = model, task
        self.pretrained_cfg = getattr(model.base, "pretrained_cfg", None)  # its input normalisation
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, task=self.task)


def _file_bytes(path) -> int:
    return Path(path).stat().st_size
