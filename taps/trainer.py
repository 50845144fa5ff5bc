"""One training loop for TAPS and its baselines.

    result = train(TrainConfig(dataset="fashion-mnist", method="taps", lam=1.0))

The loop is plain PyTorch a reader can hold in their head: build data and model, one optimizer
with the scores in their own group, a cosine schedule, and per step
``loss = task_loss + ramp(step)·penalty``. Everything the outside world sees goes through
callbacks (per step and per epoch), so the CLI, the workbench and the tests observe the same
events; the loop never knows who listens.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import pickle
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .adaptation import gated_layers
from .gate import gate_on
from .layers import prime_gates, set_gates_learning
from .backbones import check_backbone, create_backbone, device_description, input_normalization, resolve_device
from .config import TAPSConfig
from .data import get_manifest, load_dataset, require_dataset
from .errors import ConfigError, TrainingError, WeightsUnavailableError
from .fileio import atomic_write
from .methods import METHODS, prepare_model, set_train_mode
from .packs import save_pack
from .budget import BUDGET_KINDS, BudgetController, LayerCosts, project_to_budget
from .penalty import SparsityPenalty, penalty_weights
from .schedule import build_scheduler, freeze_step, lam_at, plan_stages, stage_at
from .stats import layer_report, summarize
from .tensor_checks import check_tensors

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
NORM_STATS = ("auto", "frozen", "adapt")
PACK = "task.safetensors"


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


@dataclass
class StepEvent:
    step: int  # global step, from 1
    total_steps: int
    epoch: int  # from 0
    loss: float
    task_loss: float
    penalty: float
    lam_now: float  # λ after the warm-up ramp
    lr: float
    scores: list[float]  # L per task: K·L in joint training, task after task
    active_layers: int
    images_per_sec: float
    task_losses: list[float] | None = None  # joint training: each task's loss, in config.tasks order


@dataclass
class EpochEvent:
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    val_acc: float
    test_acc: float
    task_specific_layers_pct: float
    additional_params_pct: float
    active_layers: int
    seconds: float
    tasks: dict | None = None  # joint training: each task's accuracies and costs
    stage: int | None = None  # λ path: the stage this epoch belongs to
    lam: float | None = None  # the λ in force at the epoch's end (the controller's, in budget mode)
    snapshot: str | None = None  # λ path: the task pack saved at the end of a stage
    warning: str | None = None  # something the user should know, e.g. a loss still at chance


@dataclass
class StartEvent:
    config: dict
    device: str
    layer_names: list[str]
    layer_kinds: list[str]
    layer_params: list[int]
    classes: list[str]
    train_size: int
    val_size: int
    test_size: int
    total_steps: int
    start_epoch: int
    tasks: list[str] = field(default_factory=list)
    total_epochs: int | None = None  # all stages of a λ path; None: config["epochs"]


@dataclass
class TrainResult:
    status: str  # done | cancelled
    epochs_done: int
    metrics: dict
    layer_report: list[dict]
    pack_path: str | None
    history: list[dict]
    task_packs: dict[str, str] = field(default_factory=dict)  # joint training: one pack per task
    base_path: str | None = None  # joint training: the trained shared base
    stage_packs: list[str] = field(default_factory=list)  # λ path: one pack per stage, in λ order


class Callback(Protocol):
    def on_start(self, event: StartEvent) -> None: ...
    def on_step(self, event: StepEvent) -> None: ...
    def on_epoch(self, event: EpochEvent) -> None: ...


def _emit(callbacks, hook: str, event) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(event)


class Normalize(nn.Module):
    """(x − mean) / std per channel, on whatever device the images are."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_task_data(config: TrainConfig, dataset: str):
    """The train/val/test splits of ``dataset`` as ``config`` asks. Images arrive in [0, 1]; the
    backbone's own normalisation is applied on the device, so the data pipeline does not depend
    on which backbone trains on it."""
    return load_dataset(dataset, resolution=config.resolution, train_subset=config.train_subset,
                        test_subset=config.eval_subset, val_fraction=config.val_fraction, seed=config.seed,
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), data_root=config.data_root,
                        allow_download=config.allow_download)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    model = create_backbone(config.backbone, num_classes, config.weights, checkpoint=config.checkpoint)
    return prepare_model(model, config.method, config.taps_config(),
                         freeze_layers=config.freeze_layers, freeze_budget_pct=config.freeze_budget_pct)


def check_budget_reachable(config: TrainConfig, model: nn.Module, num_classes: int) -> None:
    """Refuse a budget below what every task of this model costs (norms and head, for a parameter
    budget): λ would rise without bound and the run could not end within it."""
    if config.budget_pct is None:
        return
    floor = LayerCosts(model, config.budget_kind).floor_pct()
    if config.budget_pct < floor:
        least = math.ceil(floor * 100) / 100  # the smallest budget, in hundredths, that can be met
        raise ConfigError(f"budget_pct must be ≥ {least} for a {config.budget_kind} budget, got {config.budget_pct}: "
                          f"norms and head of {config.backbone} with {num_classes} classes already cost {floor:.3f} %")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the scores in their own group: own lr, never weight decay."""
    scores = [m.score for _, m in gated_layers(model) if m.score.requires_grad]
    score_ids = {id(p) for p in scores}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in score_ids]
    groups = [{"params": rest, "weight_decay": config.weight_decay, "name": "weights"}]
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "name": "scores",
                       "lr": config.score_lr or config.lr})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def eval_loader(images, config: TrainConfig, pin: bool) -> DataLoader:
    return DataLoader(images, batch_size=max(config.batch_size, 64), shuffle=False,
                      num_workers=config.num_workers, pin_memory=pin)


def mixed_precision_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast on GPUs that have it, float16 (with loss scaling) on older ones; full
    precision on CPU, where autocast is slower than it saves."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def uses_channels_last(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Convolutions in NHWC: oneDNN's fast path on CPU (an EfficientNet-Lite0 step 1.6–1.9× faster,
    ResNet-50 1.15×, measured on 2 cores) and the tensor cores' under mixed precision."""
    return device.type == "cpu" or amp_dtype is not None


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype=None,
             normalize: nn.Module = nn.Identity()) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(normalize(images))
        correct += (logits.argmax(1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint needs: everything trainable plus buffers (the frozen base is rebuilt)."""
    params = dict(model.named_parameters())
    keep = {n for n, p in params.items() if p.requires_grad} | {f"{n}.score" for n, _ in gated_layers(model)}
    return {k: v for k, v in model.state_dict().items() if k in keep or k not in params}


def prepare_run(config: TrainConfig) -> tuple[Path | None, torch.device]:
    """What every training run starts with: its output folder, seeds, the device, and
    deterministic kernels on CPU (a seeded CPU run repeats exactly)."""
    out = Path(config.out_dir) if config.out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    return out, device


def train(config: TrainConfig, callbacks: list[Callback] = (), *, resume: bool = False,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Train one task. With ``resume`` and a checkpoint in ``config.out_dir`` it continues after
    the last finished epoch and ends exactly where an uninterrupted run would (CPU, seeded).
    ``should_stop`` is polled every step: a cooperative cancel that keeps the last checkpoint."""
    config.validate()
    if config.tasks:
        from .joint import train_joint  # several tasks at once: Eq. 4

        return train_joint(config, callbacks, should_stop=should_stop)
    out, device = prepare_run(config)

    data = load_task_data(config, config.dataset)
    model = build_model(config, len(data.classes))
    check_budget_reachable(config, model, len(data.classes))
    model = model.to(device)
    mean, std = input_normalization(model)
    normalize = Normalize(mean, std).to(device)
    amp_dtype = mixed_precision_dtype(device, config.amp)
    channels_last = uses_channels_last(device, amp_dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = build_optimizer(model, config)

    pin = device.type == "cuda"
    val_loader, test_loader = eval_loader(data.val, config, pin), eval_loader(data.test, config, pin)
    # Whole batches only (BatchNorm dislikes a last batch of 1), unless the data is smaller than one.
    drop_last = len(data.train) >= config.batch_size
    steps_per_epoch = len(data.train) // config.batch_size if drop_last else 1
    stages = plan_stages(config.lam_path or [config.lam], config.epochs, config.path_stage_epochs, steps_per_epoch)
    total_epochs, total_steps = stages[-1].last_epoch + 1, stages[-1].start + stages[-1].steps
    scheduler = build_scheduler(optimizer, total_steps, config.gate_freeze, stages)
    budget = None
    if config.budget_pct is not None:  # the penalty is the Lagrangian term of the budget: weights by its kind
        costs = LayerCosts(model, config.budget_kind)
        # The target reaches the budget two thirds of the way to the gate freeze, so the last third
        # settles λ and trains the layers that stay. It starts at the cost of the initial gates
        # (from the config, so a resumed run anneals the same way).
        budget = BudgetController(costs, config.budget_pct, config.budget_gain,
                                  anneal_steps=round(2 / 3 * freeze_step(stages[0], config.gate_freeze)),
                                  start_pct=costs.cost_pct(costs.active([config.score_init] * len(costs.layers))))
        penalty_term = SparsityPenalty(model, weights=penalty_weights(model, config.budget_kind))
    else:
        penalty_term = SparsityPenalty(model, config.penalty_mode) if config.method == "taps" else None

    start_epoch, history = 0, []
    ckpt_path = out / CHECKPOINT if out else None
    if resume and ckpt_path and ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise TrainingError(f"refused to resume from {ckpt_path} for safety: besides tensors it holds pickled "
                                "Python objects, and unpickling them could run arbitrary code; delete it to "
                                "train from the start") from exc
        except (RuntimeError, EOFError, OSError) as exc:  # truncated or damaged
            raise TrainingError(f"cannot read the checkpoint {ckpt_path} ({exc}); delete it to train from "
                                "the start") from exc
        _check_checkpoint(ckpt, ckpt_path, model)
        if ckpt["config"] != _resume_key(config):
            raise ConfigError(f"{ckpt_path} was written by a run with different settings; "
                              "resume with the run's own configuration")
        missing = set(_trainable_state(model)) - set(ckpt["model"])
        unexpected = set(ckpt["model"]) - set(model.state_dict())
        if missing or unexpected:
            raise TrainingError(f"{ckpt_path} is not a checkpoint of this run (missing {sorted(missing)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]})")
        check_tensors(ckpt["model"], str(ckpt_path), TrainingError, like=model.state_dict())
        model.load_state_dict(ckpt["model"], strict=False)  # keys checked just above; the frozen base is not in it
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history = ckpt["epoch"] + 1, json.loads(ckpt["history"])
        if budget is not None:
            budget.lam = float(ckpt["budget_lam"])

    layers = gated_layers(model)
    report = layer_report(model)
    _emit(callbacks, "on_start", StartEvent(
        config=config.to_dict(), device=device_description(device),
        layer_names=[r.name for r in report], layer_kinds=[r.kind for r in report],
        layer_params=[r.params for r in report], classes=list(data.classes),
        train_size=len(data.train), val_size=len(data.val), test_size=len(data.test),
        total_steps=total_steps, start_epoch=start_epoch, total_epochs=total_epochs))

    # The scores' group has lr 0 after each stage's gate freeze: no gradient is wanted for them then.
    score_group = next((g for g in optimizer.param_groups if g["name"] == "scores"), None)
    status = "done"
    for epoch in range(start_epoch, total_epochs):
        # Seeding per epoch makes shuffling and augmentation of epoch e independent of whether
        # the run was resumed, so a resumed run reproduces an uninterrupted one.
        seed_everything(config.seed * 1000 + epoch)
        loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, drop_last=drop_last,
                            num_workers=config.num_workers, pin_memory=pin,
                            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        set_train_mode(model, freeze_norm_stats=config.freezes_norm_stats)
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        recent_losses = collections.deque(maxlen=max(1, steps_per_epoch // 4))
        for i, (images, labels) in enumerate(loader):
            step = epoch * steps_per_epoch + i + 1
            # Before the forward pass, so last step's gradients are freed while activations grow.
            optimizer.zero_grad(set_to_none=True)
            if score_group is not None:
                set_gates_learning(score_group["params"], score_group["lr"] > 0)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(normalize(images))
                task_loss = F.cross_entropy(logits.float(), labels)
            lam_now = budget.lam if budget else lam_at(stages, step, config.penalty_warmup)
            penalty = penalty_term(lam_now) if penalty_term is not None else torch.zeros((), device=device)
            loss = task_loss + penalty
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint is {ckpt_path}" if ckpt_path and ckpt_path.exists() else ""
                raise TrainingError(f"loss became {loss.item()} at step {step} (epoch {epoch + 1}){kept}. "
                                    f"Try a lower learning rate than {config.lr}.")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            seen += labels.numel()
            correct += (logits.argmax(1) == labels).sum().item()
            task_value = task_loss.item()  # one device sync for the three uses below
            loss_sum += task_value * labels.numel()
            recent_losses.append(task_value)
            scores = torch.stack([m.score.detach() for _, m in layers]).tolist()  # one device sync
            prime_gates([m for _, m in layers], scores)  # the next forward pass reads no score
            if budget is not None:
                budget_step(budget, scores, step, freeze_step(stages[0], config.gate_freeze))
            _emit(callbacks, "on_step", StepEvent(
                step=step, total_steps=total_steps, epoch=epoch, loss=loss.item(),
                task_loss=task_value, penalty=penalty.item(), lam_now=lam_now,
                lr=optimizer.param_groups[0]["lr"], scores=scores,
                active_layers=sum(gate_on(s, m.threshold) for s, (_, m) in zip(scores, layers)),
                images_per_sec=seen / max(time.perf_counter() - t0, 1e-9)))
            if should_stop():
                status = "cancelled"
                break
        if status == "cancelled":
            break
        stats = summarize(model)
        stage = stage_at(stages, (epoch + 1) * steps_per_epoch)
        record = EpochEvent(
            epoch=epoch, epochs=total_epochs, train_loss=loss_sum / max(seen, 1),
            train_acc=correct / max(seen, 1), val_acc=evaluate(model, val_loader, device, amp_dtype, normalize),
            test_acc=evaluate(model, test_loader, device, amp_dtype, normalize),
            task_specific_layers_pct=stats.task_specific_layers_pct,
            additional_params_pct=stats.additional_params_pct, active_layers=stats.active_layers,
            seconds=time.perf_counter() - t0, stage=stage.index if config.lam_path else None,
            lam=budget.lam if budget else stage.lam)
        if epoch == 0:
            record.warning = chance_warning(statistics.fmean(recent_losses), len(data.classes))
            if record.warning:
                log.warning("%s", record.warning)
        if config.lam_path and epoch == stage.last_epoch and out:  # a frontier point: keep this stage's task
            record.snapshot = str(save_pack(
                model, out / f"stage-{stage.index}.safetensors", class_names=list(data.classes), lam=stage.lam,
                metrics={k: getattr(record, k) for k in ("val_acc", "test_acc")} | stats.to_dict(),
                extra=pack_extra(config, mean, std)))
        history.append(asdict(record))
        _emit(callbacks, "on_epoch", record)  # first: a checkpoint never runs ahead of what listeners recorded
        if ckpt_path:
            state = {"config": _resume_key(config), "epoch": epoch, "model": _trainable_state(model),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "history": json.dumps(history), "budget_lam": budget.lam if budget else 0.0}
            atomic_write(ckpt_path, lambda fh: torch.save(state, fh))

    final = history[-1] if history else {}
    stats = summarize(model)
    metrics = {
        "val_acc": final.get("val_acc"), "test_acc": final.get("test_acc"),
        "train_acc": final.get("train_acc"),
        **{k: v for k, v in stats.to_dict().items()},
    }
    final_lam = budget.lam if budget else stages[-1].lam
    if budget is not None:
        metrics.update(budget_pct=config.budget_pct, budget_kind=config.budget_kind, lam_final=final_lam)
    snapshots = [h for h in history if h.get("snapshot")]
    if config.lam_path:  # one frontier point per stage
        metrics["path"] = [{k: h[k] for k in (*PATH_POINT_FIELDS, "snapshot")} for h in snapshots]
    pack_path = None
    if out and status == "done":
        pack_path = str(save_pack(model, out / PACK, class_names=list(data.classes), lam=final_lam, metrics=metrics,
                                  extra=pack_extra(config, mean, std)))
    return TrainResult(status=status, epochs_done=len(history), metrics=metrics,
                       layer_report=[r.to_dict() for r in layer_report(model)],
                       pack_path=pack_path, history=history, stage_packs=[h["snapshot"] for h in snapshots])


PATH_POINT_FIELDS = ("stage", "lam", "val_acc", "test_acc", "task_specific_layers_pct", "additional_params_pct",
                     "active_layers")


def chance_warning(recent_loss: float, num_classes: int) -> str | None:
    """A warning when the training loss at the end of the first epoch (its last quarter's steps)
    is still within 5 % of chance (ln C, what a model that has learned nothing scores), so a run
    that is not learning says so early."""
    chance = math.log(num_classes)
    if num_classes < 2 or recent_loss < 0.95 * chance:
        return None
    return (f"training loss {recent_loss:.3f} at the end of the first epoch is still at chance (ln {num_classes} "
            f"= {chance:.3f}): the model is not learning. Try another learning rate, norm_stats, or more epochs.")


def pack_extra(config: TrainConfig, mean, std) -> dict:
    """What a task pack records about how it was trained, to be evaluated the same way later."""
    return {"method": config.method, "dataset": config.dataset, "resolution": config.resolution,
            "mean": list(mean), "std": list(std)}


def budget_step(budget: BudgetController, scores: list[float], step: int, freeze_at: int) -> None:
    """Budget mode after a step. While the gates learn, λ follows the measured cost against the
    annealed target, and the target caps the gates: active layers beyond it, lowest score first,
    are switched off — gradual pruning that cannot overshoot in a cascade, since scores bunched
    near τ cross together when λ alone pushes them. At the freeze the gates are projected onto
    the budget (the highest scores that fit stay on), so the run ends at its budget."""
    if step < freeze_at:
        budget.update(scores, step)
        project_to_budget(budget.costs, budget.target_at(step), switch_on=False)
    elif step == max(freeze_at, 1):
        project_to_budget(budget.costs, budget.target)


CHECKPOINT_FIELDS = ("config", "epoch", "model", "optimizer", "scheduler", "history", "budget_lam")


def _check_checkpoint(ckpt, path: Path, model: nn.Module) -> None:
    """A run checkpoint has the fields resuming reads, and its optimizer state and λ are finite
    (the model's tensors are checked against the model once their names are known to fit)."""
    missing = [f for f in CHECKPOINT_FIELDS if f not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_FIELDS)
    if missing or not isinstance(ckpt["model"], dict) or not isinstance(ckpt["optimizer"], dict):
        raise TrainingError(f"{path} is not a checkpoint of this run (missing or malformed: "
                            f"{missing or ['model', 'optimizer']}); delete it to train from the start")
    buffers = {f"optimizer state {i} {k}": v for i, state in dict(ckpt["optimizer"].get("state", {})).items()
               for k, v in dict(state).items() if isinstance(v, torch.Tensor)}
    check_tensors(buffers, str(path), TrainingError)
    lam = ckpt["budget_lam"]
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise TrainingError(f"{path}: budget_lam must be a finite number, got {lam!r}")


def _resume_key(config: TrainConfig) -> str:
    """Settings that must match for a checkpoint to be resumed (not where it lives, not the device)."""
    key = {k: v for k, v in config.to_dict().items() if k not in ("out_dir", "device", "num_workers", "recompute_weights")}
    return json.dumps(key, sort_keys=True)
