"""The settings of a training run: ``TrainConfig``, one field per setting with its documentation.

Every field is a flag of ``python -m taps train`` (its help is the field's), a key of the run's
saved configuration, and a box of the Launch page. ``validate`` refuses bad values before anything
is allocated; ``preflight`` also checks what can be known without training (the backbone, the
dataset on this machine, a budget the model can meet), so a launcher refuses bad input before
queueing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..backbones import check_backbone
from .budget import BUDGET_KINDS
from ..method.config import TAPSConfig
from ..data import get_manifest, require_dataset
from ..errors import ConfigError, WeightsUnavailableError
from .methods import METHODS
from .points import RunKind
from .schedule import total_epochs
from .sparsity import check_budget_reachable
from .tasks import build_model

NORM_STATS = ("auto", "frozen", "adapt")


def setting(default, help: str, *, choices: tuple | None = None):
    """A TrainConfig field with its documentation (and allowed values), which the command line's
    --help shows: the one place a setting is described. A list default gets a fresh copy per config."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run needs; saved with the run. Defaults are the tested CPU defaults: see
    ``docs`` in the README ("Defaults that work on short runs")."""

    # Each field's help is its documentation: `python -m taps train --help` prints it with the default.
    backbone: str = setting("efficientnet_lite0", "timm model name, or tv_<torchvision model>; "
                            "`python -m taps backbones` lists those with weights offline")
    weights: str = setting("auto", "where pretrained weights come from; none: random init",
                           choices=("auto", "package", "hub", "none"))
    checkpoint: str | None = setting(None, "a local pretrained weights file to start from")
    dataset: str = setting("hanzi", "a dataset name (`python -m taps datasets`) or a folder with one sub-folder "
                           "per class")
    data_root: str | None = setting(None, "where datasets are looked for and cached")
    allow_download: bool = setting(False, "fetch a dataset that is not on this machine")
    resolution: int = setting(64, "image side in pixels; 64 keeps CPU runs short, the paper trains at 224")
    train_subset: int | None = setting(2000, "class-balanced training images; None: all")
    eval_subset: int | None = setting(1000, "validation and test images each; None: all")
    val_fraction: float = setting(0.1, "share of training images carved out for validation when the dataset "
                                  "has no validation split")
    method: str = setting("taps", "TAPS or a baseline of the paper", choices=METHODS)
    lam: float = setting(0.3, "λ, the sparsity penalty: the price of each task-specific layer")
    lr: float = setting(0.003, "learning rate of SGD (momentum, cosine schedule)")
    score_lr: float | None = setting(0.01, "the gate scores' own learning rate; None: same as lr")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.0, "weight decay of deltas, norms and head (never of scores)")
    epochs: int = setting(3, "training epochs (the first stage of a λ path)")
    batch_size: int = setting(32, "images per step (per task in joint training)")
    penalty_warmup: float = setting(0.3, "fraction of training over which the penalty ramps from 0 to λ")
    gate_freeze: float = setting(0.7, "fraction of training after which gates stop moving (1.0: never)")
    threshold: float = setting(0.1, "τ: a layer is task-specific while its score is ≥ τ")
    score_init: float = setting(0.15, "initial score of every layer; above τ, so step 0 is the pretrained model")
    penalty_mode: str = setting("layers", "layers: every layer costs the same (Eq. 3); params: a layer costs its "
                                "share of the parameters", choices=("layers", "params"))
    norm_stats: str = setting("auto", "BatchNorm running statistics: frozen keeps the pretrained ones (steady on "
                              "short runs), adapt follows the task's batches (the paper), auto is frozen for "
                              "pretrained weights and adapt for random ones", choices=NORM_STATS)
    include: list[str] = setting([], "fnmatch patterns of module names to gate; empty: every Conv2d and Linear")
    exclude: list[str] = setting([], "fnmatch patterns of module names never gated")
    freeze_layers: int | None = setting(None, "manual_freeze: how many last layers train")
    freeze_budget_pct: float | None = setting(None, "manual_freeze: or the last layers that fit this % of layers")
    tasks: list[str] = setting([], "joint training (Eq. 4) over these datasets, method taps or finetune; "
                               "empty: one task")
    budget_pct: float | None = setting(None, "budget mode: end with at most this % of task-specific layers or "
                                       "additional parameters (--budget-kind); λ is found during training")
    budget_kind: str = setting("layers", "what the budget counts", choices=BUDGET_KINDS)
    budget_gain: float = setting(0.1, "change of λ per step per 100 points over the annealed target "
                                 "(dual ascent)")
    lam_path: list[float] = setting([], "λ path: the frontier from one run; stage 0 trains --epochs at the first "
                                    "λ, each later stage --path-stage-epochs more at the next, one task pack each")
    path_stage_epochs: int = setting(1, "epochs of each later stage of a λ path")
    seed: int = setting(0, "seed of data order, subsets, augmentation and initialisation")
    device: str = setting("auto", "cpu, cuda, cuda:1, mps…; auto: CUDA, then MPS, then CPU")
    amp: bool = setting(True, "mixed precision on CUDA; ignored on CPU")
    recompute_weights: bool = setting(False, "compose w̄ + δ again in the backward pass: one weight-sized copy "
                                      "less in memory, a few % more time, same gradients")
    num_workers: int = setting(0, "data loader worker processes")
    out_dir: str | None = setting(None, "folder for the checkpoint and task pack; unset keeps nothing on disk")

    def validate(self) -> "TrainConfig":
        """Refuse bad settings before anything is allocated, with a message saying which."""
        def number(name, low=None, high=None, strict_low=False, integer=False, optional=False):
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}", name)
            if integer and int(value) != value:
                raise ConfigError(f"{name} must be a whole number, got {value!r}", name)
            if integer:  # 3.0 from a JSON file or a form is 3: seeds and ranges take only ints
                setattr(self, name, value := int(value))
            if low is not None and (value <= low if strict_low else value < low):
                raise ConfigError(f"{name} must be {'>' if strict_low else '≥'} {low}, got {value!r}", name)
            if high is not None and value > high:
                raise ConfigError(f"{name} must be ≤ {high}, got {value!r}", name)

        def kind(name, types, what, optional=False):
            value = getattr(self, name)
            if not (value is None and optional) and (not isinstance(value, types) or value == ""):
                raise ConfigError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}", name)

        for name in ("backbone", "dataset", "method", "weights", "norm_stats", "penalty_mode", "budget_kind", "device"):
            kind(name, str, "a non-empty text")
        for name in ("checkpoint", "data_root", "out_dir"):
            kind(name, str, "a path", optional=True)
        for name in ("allow_download", "amp", "recompute_weights"):
            kind(name, bool, "True or False")
        for name in ("include", "exclude", "tasks"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{name} must be a list of names, got {value!r}")
        number("lam", 0)
        number("lr", 0, 10, strict_low=True)
        number("score_lr", 0, 100, strict_low=True, optional=True)
        number("momentum", 0, 1)
        number("weight_decay", 0, 1)
        number("epochs", 1, 10_000, integer=True)
        number("batch_size", 1, 4096, integer=True)
        number("resolution", 16, 1024, integer=True)
        number("train_subset", 1, 10**8, integer=True, optional=True)
        number("eval_subset", 1, 10**8, integer=True, optional=True)
        number("val_fraction", 0, 0.9, strict_low=True)
        number("penalty_warmup", 0, 1)
        number("gate_freeze", 0, 1)
        number("threshold", -10, 10)
        number("score_init", -10, 10)
        number("num_workers", 0, 64, integer=True)
        number("seed", 0, 2**32 - 1, integer=True)
        number("freeze_layers", 0, integer=True, optional=True)
        number("freeze_budget_pct", 0, 1000, optional=True)
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.tasks:
            if not isinstance(self.tasks, (list, tuple)) or not all(isinstance(t, str) and t for t in self.tasks):
                raise ConfigError(f"tasks must be a list of dataset names, got {self.tasks!r}")
            if len(self.tasks) < 2 or len(set(self.tasks)) != len(self.tasks):
                raise ConfigError(f"joint training needs at least two different datasets, got {list(self.tasks)}")
            if self.method not in ("taps", "finetune"):
                raise ConfigError(f"joint training runs method 'taps' (Eq. 4) or 'finetune' (a multi-head "
                                  f"base), not {self.method!r}")
        number("budget_pct", 0, 100, strict_low=True, optional=True)
        number("budget_gain", 0, 100, strict_low=True)
        number("path_stage_epochs", 1, 10_000, integer=True)
        if self.budget_kind not in BUDGET_KINDS:
            raise ConfigError(f"budget_kind must be 'layers' or 'params', got {self.budget_kind!r}")
        if self.lam_path:
            lams = self.lam_path
            if not isinstance(lams, (list, tuple)) or len(lams) < 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    for v in lams):
                raise ConfigError(f"lam_path must list at least two finite λ ≥ 0, got {lams!r}")
            later = next((i for i in range(1, len(lams)) if not lams[i] > lams[i - 1]), None)
            if later is not None:
                raise ConfigError(f"lam_path must increase (each stage prunes further): λ #{later + 1} must be "
                                  f"> {lams[later - 1]}, got {lams[later]}")
        if (self.budget_pct is not None or self.lam_path) and (self.method != "taps" or self.tasks):
            raise ConfigError("a budget or a λ path applies to single-task TAPS runs (method 'taps', no tasks)")
        if self.budget_pct is not None and self.lam_path:
            raise ConfigError("give either a budget or a λ path, not both")
        if self.norm_stats not in NORM_STATS:
            raise ConfigError(f"norm_stats must be one of {', '.join(NORM_STATS)}, got {self.norm_stats!r}")
        if self.penalty_mode not in ("layers", "params"):
            raise ConfigError(f"penalty_mode must be 'layers' or 'params', got {self.penalty_mode!r}")
        if self.weights not in ("auto", "package", "hub", "none"):
            raise ConfigError(f"weights must be auto, package, hub or none, got {self.weights!r}")
        return self

    def preflight(self) -> "TrainConfig":
        """``validate`` plus what can be checked without training: the backbone is known, the
        dataset is known and on this machine (or may be downloaded), a named checkpoint exists.
        A launcher calls this so bad input is refused before anything is queued."""
        self.validate()
        check_backbone(self.backbone)
        datasets = self.tasks or [self.dataset]
        for dataset in datasets:  # every name first: a typo is the first thing to hear about
            get_manifest(dataset)
        for dataset in datasets:
            manifest = require_dataset(dataset, data_root=self.data_root, allow_download=self.allow_download,
                                       train_subset=self.train_subset, val_fraction=self.val_fraction, seed=self.seed)
        if self.budget_pct is not None and self.budget_kind == "params":  # the floor depends on the model
            with torch.device("meta"):  # sizes only: no weights are loaded, no memory is allocated
                model = build_model(replace(self, weights="none", checkpoint=None), manifest["num_classes"])
            check_budget_reachable(self, model, manifest["num_classes"])
        if self.checkpoint is not None and not Path(self.checkpoint).expanduser().is_file():
            raise WeightsUnavailableError(f"checkpoint file {self.checkpoint} does not exist; "
                                          "pass the path of a local weights file, or leave it unset")
        return self

    @property
    def freezes_norm_stats(self) -> bool:
        """Whether normalisation layers keep their running statistics ("auto" resolved)."""
        if self.norm_stats == "auto":
            return self.weights != "none"
        return self.norm_stats == "frozen"

    @property
    def run_kind(self) -> RunKind:
        if self.tasks:
            return RunKind.JOINT
        if self.lam_path:
            return RunKind.PATH
        return RunKind.BUDGET if self.budget_pct is not None else RunKind.SINGLE

    @property
    def planned_lam(self) -> float | None:
        """The λ the run starts with, as far as it is known before it trains: none for a method
        without a penalty or for a budget run (its λ is found during training), a λ path's first."""
        if self.method != "taps" or self.budget_pct is not None:
            return None
        return self.lam_path[0] if self.lam_path else self.lam

    @property
    def planned_epochs(self) -> int:
        """Epochs in all: a λ path adds its later stages."""
        return total_epochs(self.epochs, self.lam_path, self.path_stage_epochs)

    def taps_config(self) -> TAPSConfig:
        return TAPSConfig(threshold=self.threshold, score_init=self.score_init, include=self.include,
                          exclude=self.exclude, penalty_mode=self.penalty_mode,
                          recompute_weights=self.recompute_weights)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**data)
