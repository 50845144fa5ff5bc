"""TAPS — Task Adaptive Parameter Sharing (Wallingford et al., CVPR 2022) as a library.

    import taps
    model = taps.adapt(timm.create_model("resnet50", pretrained=True, num_classes=10))
    loss = task_loss + taps.sparsity_penalty(model, lam=0.5)
    taps.save_pack(model, "flowers.taps.safetensors")       # only what the task adds
    plain = taps.merge(model)                                # zero-overhead inference
"""
from .adapt import adapt, find_head, gated_layers, norm_layers, set_threshold
from .config import TAPSConfig
from .layers import GatedConv2d, GatedLayer, GatedLinear, hard_gate
from .merge import merge
from .packs import PackError, TaskPack, load_pack, read_pack, save_pack
from .penalty import penalty_weights, sparsity_penalty
from .stats import LayerInfo, TaskStats, decathlon_score, layer_report, parameter_multiplier, summarize

__all__ = [
    "TAPSConfig", "adapt", "find_head", "gated_layers", "norm_layers", "set_threshold",
    "GatedLayer", "GatedConv2d", "GatedLinear", "hard_gate", "merge",
    "PackError", "TaskPack", "save_pack", "load_pack", "read_pack",
    "sparsity_penalty", "penalty_weights",
    "LayerInfo", "TaskStats", "layer_report", "summarize", "parameter_multiplier", "decathlon_score",
]
__version__ = "0.1.0"
