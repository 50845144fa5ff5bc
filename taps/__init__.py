"""TAPS — Task Adaptive Parameter Sharing (Wallingford et al., CVPR 2022) as a library.

    import taps
    model = taps.adapt(timm.create_model("resnet50", pretrained=True, num_classes=10))
    loss = task_loss + taps.sparsity_penalty(model, lam=0.5)
    taps.save_pack(model, "flowers.taps.safetensors")       # only what the task adds
    plain = taps.merge(model)                                # zero-overhead inference

The method is the package ``taps.method`` (gated layers, composition, adaptation, penalty, packs,
merging, stats); the training around it is ``taps.training`` (settings, the one training loop,
task sets, sparsity schedules, checkpoints, events), fed by ``taps.data`` and ``taps.backbones``.

Names are imported on first use (PEP 562), so light modules such as ``taps.errors`` can be
imported without loading torch — the dashboard process stays small and starts fast.
"""
import importlib

_EXPORTS = {
    "method.adaptation": ["adapt", "find_head", "gated_layers", "norm_layers", "set_threshold"],
    "method.config": ["TAPSConfig"],
    "method.layers": ["GatedConv2d", "GatedLayer", "GatedLinear", "hard_gate", "set_gates_learning"],
    "method.merging": ["merge"],
    "method.multitask": ["MultiTaskModel", "MultiTaskReport"],
    "method.packs": ["PackError", "TaskPack", "load_pack", "read_pack", "save_pack"],
    "method.penalty": ["SparsityPenalty", "penalty_weights", "sparsity_penalty"],
    "method.stats": ["LayerInfo", "TaskStats", "decathlon_score", "layer_report", "pack_stats", "parameter_multiplier",
              "summarize"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'taps' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
