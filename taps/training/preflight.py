"""What a launcher checks before queueing a run, beyond ``TrainConfig.validate``: what can be
known without training (the backbone, each dataset on this machine, a budget the model can
meet, a named checkpoint file), so bad input is refused before anything is queued."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..backbones import check_backbone
from ..data import get_manifest, require_dataset
from ..errors import WeightsUnavailableError
from .sparsity import check_budget_reachable
from .tasks import build_model

if TYPE_CHECKING:
    from .train_config import TrainConfig


def preflight(config: "TrainConfig") -> "TrainConfig":
    """``config`` validated and checked against this machine; raises a TAPSError saying what is wrong."""
    config.validate()
    data, sparsity = config.data, config.sparsity
    check_backbone(config.backbone)
    for dataset in config.datasets:  # every name first: a typo is the first thing to hear about
        get_manifest(dataset)
    for dataset in config.datasets:
        manifest = require_dataset(dataset, data_root=data.data_root, allow_download=data.allow_download,
                                   train_subset=data.train_subset, val_fraction=data.val_fraction, seed=config.seed)
    if sparsity.budget_pct is not None and sparsity.budget_kind == "params":  # the floor depends on the model
        with torch.device("meta"):  # sizes only: no weights are loaded, no memory is allocated
            model = build_model(config.updated(weights="none", checkpoint=None), manifest["num_classes"])
        check_budget_reachable(config, model, manifest["num_classes"])
    if config.checkpoint is not None and not Path(config.checkpoint).expanduser().is_file():
        raise WeightsUnavailableError(f"checkpoint file {config.checkpoint} does not exist; "
                                      "pass the path of a local weights file, or leave it unset")
    return config
