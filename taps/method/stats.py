"""What a task costs: the per-layer report and the paper's summary numbers."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .adaptation import gated_layers, head_name, norm_layers


@dataclass
class LayerInfo:
    index: int
    name: str
    kind: str  # conv | attention-qkv | attention-proj | mlp | linear
    params: int
    score: float
    active: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskStats:
    gated_layers: int
    active_layers: int
    task_specific_layers_pct: float  # active gates / L · 100
    delta_params: int  # numel of the active deltas
    norm_params: int  # numel of normalisation parameters and floating buffers
    head_params: int
    additional_params: int  # delta + norm + head
    base_params: int  # numel of the shared backbone (head excluded)
    additional_params_pct: float  # additional / base · 100

    def to_dict(self) -> dict:
        return asdict(self)


def layer_kind(name: str, module: nn.Module) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Conv2d):
        return "conv"
    if leaf == "qkv" or leaf in ("q", "k", "v", "q_proj", "k_proj", "v_proj"):
        return "attention-qkv"
    if ".attn." in f".{name}" and leaf in ("proj", "out_proj"):
        return "attention-proj"
    if ".mlp." in f".{name}" or leaf in ("fc1", "fc2"):
        return "mlp"
    return "linear"


def layer_report(model: nn.Module) -> list[LayerInfo]:
    """One row per gated layer, input to head."""
    return [
        LayerInfo(i, name, layer_kind(name, layer), layer.delta.numel(),
                  layer.score.item(), layer.active)
        for i, (name, layer) in enumerate(gated_layers(model))
    ]


def norm_state_numel(model: nn.Module) -> int:
    total = 0
    for _, module in norm_layers(model):
        total += sum(p.numel() for p in module.parameters(recurse=False))
        total += sum(b.numel() for b in module.buffers(recurse=False) if torch.is_floating_point(b))
    return total


def base_numel(model: nn.Module) -> int:
    """Parameters of the shared backbone: everything but the TAPS additions and the head."""
    head = head_name(model)
    return sum(
        p.numel() for n, p in model.named_parameters()
        if not n.endswith((".delta", ".score")) and not (n == head or n.startswith(head + "."))
    )


def fixed_numel(model: nn.Module) -> tuple[int, int, int]:
    """(norm, head, base) parameter counts: what every task of this model pays whichever layers
    it makes task-specific, and the base the percentages are of. Reads no score, so it works on a
    model on the meta device (sizes without weights)."""
    norms = norm_state_numel(model) if getattr(getattr(model, "taps_config", None), "train_norms", True) else 0
    head = sum(p.numel() for p in model.get_submodule(head_name(model)).parameters())
    return norms, head, base_numel(model)


def summarize(model: nn.Module) -> TaskStats:
    layers = [m for _, m in gated_layers(model)]
    active = [m for m in layers if m.active]
    delta = sum(m.delta.numel() for m in active)
    norms, head, base = fixed_numel(model)
    extra = delta + norms + head
    return TaskStats(
        gated_layers=len(layers), active_layers=len(active),
        task_specific_layers_pct=100.0 * len(active) / max(len(layers), 1),
        delta_params=delta, norm_params=norms, head_params=head, additional_params=extra,
        base_params=base, additional_params_pct=100.0 * extra / max(base, 1),
    )


def pack_stats(pack, base_params: int) -> TaskStats:
    """:func:`summarize` of the model a task pack was saved from, read off the pack alone."""
    t = pack.tensors
    active = pack.active_layers
    delta = sum(t[f"delta.{n}"].numel() for n in active)
    count_norms = (pack.metadata.get("config") or {}).get("train_norms", True)
    norms = sum(v.numel() for k, v in t.items() if k.startswith("norm.") and v.is_floating_point()) if count_norms else 0
    head = sum(v.numel() for k, v in t.items() if k.startswith("head."))
    layers = int(t["scores"].numel())
    extra = delta + norms + head
    return TaskStats(
        gated_layers=layers, active_layers=len(active), task_specific_layers_pct=100.0 * len(active) / max(layers, 1),
        delta_params=delta, norm_params=norms, head_params=head, additional_params=extra,
        base_params=base_params, additional_params_pct=100.0 * extra / max(base_params, 1),
    )


def parameter_multiplier(tasks: list[TaskStats]) -> float:
    """Total parameters for K tasks over one base (paper Table 1's "4.12×")."""
    if not tasks:
        raise ValueError("need at least one task")
    base = tasks[0].base_params
    return (base + sum(t.additional_params for t in tasks)) / base


def decathlon_score(errors: dict[str, float], baseline_errors: dict[str, float],
                    gamma: float = 2.0, max_per_task: float = 1000.0) -> float:
    """Visual Decathlon S-score (Rebuffi et al. 2017): Σ α_d·max(0, Emax_d − E_d)^γ with
    Emax_d = 2× baseline error and α_d chosen so a perfect task (E = 0) scores ``max_per_task``."""
    total = 0.0
    for task, err in errors.items():
        emax = 2.0 * baseline_errors[task]
        if emax <= 0:
            raise ValueError(f"baseline error of {task!r} must be positive")
        alpha = max_per_task / emax ** gamma
        total += alpha * max(0.0, emax - err) ** gamma
    return total
