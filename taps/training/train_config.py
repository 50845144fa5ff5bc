"""The settings of a training run: ``TrainConfig``, nested and typed, and its one JSON form.

A run's settings are grouped as a reader thinks of them: the method and model at the top, the
``TAPSConfig`` that adapts the model (held, not copied), and ``data``, ``optim`` and ``sparsity``.
Every setting also has one flat name, unique across the groups (``lam``, ``dataset``, ``lr``):
the input language of ``python -m taps train --lam 1``, the Launch page, sweeps and notebooks
(``TrainConfig.from_flat(lam=1)``, ``config.updated(lam=1)``). ``to_dict``/``from_dict`` are the
one JSON form: version 2 is nested; version 1 (flat, written before the groups) still reads.

``validate`` refuses bad values before anything is allocated. Torch-free: the dashboard imports
it; checks that need the model or the data are ``preflight.preflight``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..method.config import TAPSConfig, setting
from .points import RunKind
from .schedule import total_epochs

CONFIG_VERSION = 2  # 1: flat fields (stores and checkpoints written before the groups)
NORM_STATS = ("auto", "frozen", "adapt")
METHODS = ("taps", "finetune", "feature_extractor", "bn_only", "manual_freeze")
BUDGET_KINDS = ("layers", "params")
WEIGHTS = ("auto", "package", "hub", "none")


@dataclass
class DataSettings:
    """What the run learns from and how it is read."""

    dataset: str = setting("hanzi", "a dataset name (`python -m taps datasets`) or a folder with one sub-folder "
                           "per class")
    tasks: list[str] = setting([], "joint training (Eq. 4) over these datasets, method taps or finetune; "
                               "empty: one task")
    data_root: str | None = setting(None, "where datasets are looked for and cached")
    allow_download: bool = setting(False, "fetch a dataset that is not on this machine")
    resolution: int = setting(64, "image side in pixels; 64 keeps CPU runs short, the paper trains at 224")
    train_subset: int | None = setting(2000, "class-balanced training images; None: all")
    eval_subset: int | None = setting(1000, "validation and test images each; None: all")
    val_fraction: float = setting(0.1, "share of training images carved out for validation when the dataset "
                                  "has no validation split")
    num_workers: int = setting(0, "data loader worker processes")


@dataclass
class OptimSettings:
    """How the trained tensors move: SGD with momentum on a cosine schedule."""

    epochs: int = setting(3, "training epochs (the first stage of a λ path)")
    batch_size: int = setting(32, "images per step (per task in joint training)")
    lr: float = setting(0.003, "learning rate of SGD (momentum, cosine schedule)")
    score_lr: float | None = setting(0.01, "the gate scores' own learning rate; None: same as lr")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(0.0, "weight decay of deltas, norms and head (never of scores)")
    amp: bool = setting(True, "mixed precision on CUDA; ignored on CPU")


@dataclass
class SparsitySettings:
    """Which layers become task-specific: the penalty λ and its schedule, or a budget, or a λ
    path; and the manual_freeze baseline's fixed choice."""

    lam: float = setting(0.3, "λ, the sparsity penalty: the price of each task-specific layer")
    penalty_warmup: float = setting(0.3, "fraction of training over which the penalty ramps from 0 to λ")
    gate_freeze: float = setting(0.7, "fraction of training after which gates stop moving (1.0: never)")
    budget_pct: float | None = setting(None, "budget mode: end with at most this % of task-specific layers or "
                                       "additional parameters (--budget-kind); λ is found during training")
    budget_kind: str = setting("layers", "what the budget counts", choices=BUDGET_KINDS)
    budget_gain: float = setting(0.1, "change of λ per step per 100 points over the annealed target "
                                 "(dual ascent)")
    lam_path: list[float] = setting([], "λ path: the frontier from one run; stage 0 trains --epochs at the first "
                                    "λ, each later stage --path-stage-epochs more at the next, one task pack each")
    path_stage_epochs: int = setting(1, "epochs of each later stage of a λ path")
    freeze_layers: int | None = setting(None, "manual_freeze: how many last layers train")
    freeze_budget_pct: float | None = setting(None, "manual_freeze: or the last layers that fit this % of layers")


GROUPS = {"taps": TAPSConfig, "data": DataSettings, "optim": OptimSettings, "sparsity": SparsitySettings}
GROUP_TITLES = {None: "run", "taps": "TAPS (how layers are gated)", "data": "data", "optim": "optimisation",
                "sparsity": "sparsity (which layers become task-specific)"}


@dataclass
class TrainConfig:
    """Everything a run needs; saved with the run. Defaults are the tested CPU defaults: see
    ``docs`` in the README ("Defaults that work on short runs")."""

    method: str = setting("taps", "TAPS or a baseline of the paper", choices=METHODS)
    backbone: str = setting("efficientnet_lite0", "timm model name, or tv_<torchvision model>; "
                            "`python -m taps backbones` lists those with weights offline")
    weights: str = setting("auto", "where pretrained weights come from; none: random init", choices=WEIGHTS)
    checkpoint: str | None = setting(None, "a local pretrained weights file to start from")
    norm_stats: str = setting("auto", "BatchNorm running statistics: frozen keeps the pretrained ones (steady on "
                              "short runs), adapt follows the task's batches (the paper), auto is frozen for "
                              "pretrained weights and adapt for random ones", choices=NORM_STATS)
    seed: int = setting(0, "seed of data order, subsets, augmentation and initialisation")
    device: str = setting("auto", "cpu, cuda, cuda:1, mps…; auto: CUDA, then MPS, then CPU")
    out_dir: str | None = setting(None, "folder for the checkpoint and task pack; unset keeps nothing on disk")
    taps: TAPSConfig = field(default_factory=TAPSConfig)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    sparsity: SparsitySettings = field(default_factory=SparsitySettings)

    # -- the flat input language ------------------------------------------------------------
    @classmethod
    def from_flat(cls, values: dict | None = None, /, **settings) -> "TrainConfig":
        """A config from flat setting names (``lam=1, dataset="flowers102"``); the rest default."""
        return cls()._assign({**(values or {}), **settings})  # fresh defaults: nothing to copy

    def updated(self, **settings) -> "TrainConfig":
        """A copy with some settings changed, by flat name (``config.updated(lam=1)``)."""
        new = copy.copy(self)  # shallow copies, then fresh lists: nothing is shared with self
        for group in GROUPS:
            setattr(new, group, copy.copy(getattr(self, group)))
        for holder in (new, *(getattr(new, group) for group in GROUPS)):
            for name, value in vars(holder).items():
                if isinstance(value, list):
                    setattr(holder, name, _fresh(value))
        return new._assign(settings)

    def _assign(self, settings: dict) -> "TrainConfig":
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
        for name, value in settings.items():
            setattr(self._holder(name), name, _fresh(value))
        return self

    def to_flat(self) -> dict:
        """Every setting by its flat name."""
        return {name: _fresh(getattr(self._holder(name), name)) for name in SETTINGS}

    def _holder(self, name: str):
        group = SETTINGS[name][0]
        return self if group is None else getattr(self, group)

    # -- the one JSON form ------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The nested JSON form, versioned: what a run store and a checkpoint keep."""
        top = {name: _fresh(getattr(self, name)) for name in GROUP_NAMES[None]}
        nested = {group: {name: _fresh(getattr(getattr(self, group), name)) for name in GROUP_NAMES[group]}
                  for group in GROUPS}
        return {"version": CONFIG_VERSION, **top, **nested}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from its JSON form: version 2 (nested), or version 1 / no version (flat: old
        stores, a user's own dict of settings)."""
        data = dict(data)
        version = data.pop("version", 1)
        if version == 1:
            return cls.from_flat(data)
        if version != CONFIG_VERSION:
            raise ConfigError(f"these settings are version {version!r}; this workbench reads versions 1 and "
                              f"{CONFIG_VERSION} (a newer workbench wrote them?)")
        flat = {}
        for key, value in data.items():
            if key in GROUPS:
                if not isinstance(value, dict):
                    raise ConfigError(f"settings group {key!r} must be a mapping, got {value!r}", key)
                unknown = set(value) - set(GROUP_NAMES[key])
                if unknown:
                    raise ConfigError(f"unknown {key} settings: {', '.join(sorted(unknown))}")
                flat.update(value)
            elif SETTINGS.get(key, (None,))[0] is None:
                flat[key] = value
            else:
                raise ConfigError(f"setting {key!r} belongs in the {SETTINGS[key][0]!r} group of version 2")
        return cls.from_flat(flat)

    # -- what follows from the settings -----------------------------------------------------
    @property
    def freezes_norm_stats(self) -> bool:
        """Whether normalisation layers keep their running statistics ("auto" resolved)."""
        if self.norm_stats == "auto":
            return self.weights != "none"
        return self.norm_stats == "frozen"

    @property
    def run_kind(self) -> RunKind:
        if self.data.tasks:
            return RunKind.JOINT
        if self.sparsity.lam_path:
            return RunKind.PATH
        return RunKind.BUDGET if self.sparsity.budget_pct is not None else RunKind.SINGLE

    @property
    def planned_lam(self) -> float | None:
        """The λ the run starts with, as far as it is known before it trains: none for a method
        without a penalty or for a budget run (its λ is found during training), a λ path's first."""
        s = self.sparsity
        if self.method != "taps" or s.budget_pct is not None:
            return None
        return s.lam_path[0] if s.lam_path else s.lam

    @property
    def planned_epochs(self) -> int:
        """Epochs in all: a λ path adds its later stages."""
        return total_epochs(self.optim.epochs, self.sparsity.lam_path, self.sparsity.path_stage_epochs)

    @property
    def datasets(self) -> list[str]:
        """The datasets the run trains on: the joint tasks, or the one dataset."""
        return list(self.data.tasks) or [self.data.dataset]

    def validate(self) -> "TrainConfig":
        """Refuse bad settings before anything is allocated, with a message saying which."""
        for name in ("backbone", "dataset", "method", "weights", "norm_stats", "penalty_mode", "budget_kind", "device"):
            self._check_type(name, str, "a non-empty text")
        for name in ("checkpoint", "data_root", "out_dir", "head"):
            self._check_type(name, str, "a path" if name != "head" else "a module name", optional=True)
        for name in ("allow_download", "amp", "recompute_weights", "train_norms"):
            self._check_type(name, bool, "True or False")
        for name in ("include", "exclude", "tasks"):
            value = getattr(self._holder(name), name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{name} must be a list of names, got {value!r}")
        for name, (low, high, strict_low, integer, optional) in NUMBER_RANGES.items():
            self._check_number(name, low, high, strict_low, integer, optional)
        s = self.sparsity
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}", "method")
        if s.budget_kind not in BUDGET_KINDS:
            raise ConfigError(f"budget_kind must be 'layers' or 'params', got {s.budget_kind!r}", "budget_kind")
        if self.norm_stats not in NORM_STATS:
            raise ConfigError(f"norm_stats must be one of {', '.join(NORM_STATS)}, got {self.norm_stats!r}",
                              "norm_stats")
        if self.taps.penalty_mode not in ("layers", "params"):
            raise ConfigError(f"penalty_mode must be 'layers' or 'params', got {self.taps.penalty_mode!r}",
                              "penalty_mode")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights must be auto, package, hub or none, got {self.weights!r}", "weights")
        self._check_kinds_of_run()
        return self

    def _check_type(self, name: str, types, what: str, optional: bool = False) -> None:
        value = getattr(self._holder(name), name)
        if not (value is None and optional) and (not isinstance(value, types) or value == ""):
            raise ConfigError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}", name)

    def _check_number(self, name, low, high, strict_low, integer, optional) -> None:
        holder = self._holder(name)
        value = getattr(holder, name)
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}", name)
        if integer and int(value) != value:
            raise ConfigError(f"{name} must be a whole number, got {value!r}", name)
        if integer:  # 3.0 from a JSON file or a form is 3: seeds and ranges take only ints
            setattr(holder, name, value := int(value))
        if low is not None and (value <= low if strict_low else value < low):
            raise ConfigError(f"{name} must be {'>' if strict_low else '≥'} {low}, got {value!r}", name)
        if high is not None and value > high:
            raise ConfigError(f"{name} must be ≤ {high}, got {value!r}", name)

    def _check_kinds_of_run(self) -> None:
        """Joint, budget and λ path runs: which methods and combinations make sense."""
        tasks, s = self.data.tasks, self.sparsity
        if tasks:
            if len(tasks) < 2 or len(set(tasks)) != len(tasks):
                raise ConfigError(f"joint training needs at least two different datasets, got {list(tasks)}")
            if self.method not in ("taps", "finetune"):
                raise ConfigError(f"joint training runs method 'taps' (Eq. 4) or 'finetune' (a multi-head "
                                  f"base), not {self.method!r}")
        if s.lam_path:
            lams = s.lam_path
            if not isinstance(lams, (list, tuple)) or len(lams) < 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                    for v in lams):
                raise ConfigError(f"lam_path must list at least two finite λ ≥ 0, got {lams!r}")
            later = next((i for i in range(1, len(lams)) if not lams[i] > lams[i - 1]), None)
            if later is not None:
                raise ConfigError(f"lam_path must increase (each stage prunes further): λ #{later + 1} must be "
                                  f"> {lams[later - 1]}, got {lams[later]}")
        if (s.budget_pct is not None or s.lam_path) and (self.method != "taps" or tasks):
            raise ConfigError("a budget or a λ path applies to single-task TAPS runs (method 'taps', no tasks)")
        if s.budget_pct is not None and s.lam_path:
            raise ConfigError("give either a budget or a λ path, not both")


def _fresh(value):
    """A value a config may share with no one: lists (of names, of λ) are copied."""
    return [_fresh(v) for v in value] if isinstance(value, (list, tuple)) else value


def _settings() -> dict[str, tuple[str | None, dataclasses.Field]]:
    """Flat name → (its group, None at the top; its field), in the order ``--help`` lists them."""
    found = {f.name: (None, f) for f in dataclasses.fields(TrainConfig) if f.name not in GROUPS}
    for group, kind in GROUPS.items():
        for f in dataclasses.fields(kind):
            if f.name in found:  # the flat language needs one meaning per name
                raise TypeError(f"setting {f.name!r} is in two groups")
            found[f.name] = (group, f)
    return found


SETTINGS = _settings()
GROUP_NAMES = {group: [n for n, (g, _) in SETTINGS.items() if g == group] for group in (None, *GROUPS)}

# name: (low, high, strict low, whole number, None allowed)
NUMBER_RANGES = {
    "lam": (0, None, False, False, False), "lr": (0, 10, True, False, False),
    "score_lr": (0, 100, True, False, True), "momentum": (0, 1, False, False, False),
    "weight_decay": (0, 1, False, False, False), "epochs": (1, 10_000, False, True, False),
    "batch_size": (1, 4096, False, True, False), "resolution": (16, 1024, False, True, False),
    "train_subset": (1, 10**8, False, True, True), "eval_subset": (1, 10**8, False, True, True),
    "val_fraction": (0, 0.9, True, False, False), "penalty_warmup": (0, 1, False, False, False),
    "gate_freeze": (0, 1, False, False, False), "threshold": (-10, 10, False, False, False),
    "score_init": (-10, 10, False, False, False), "num_workers": (0, 64, False, True, False),
    "seed": (0, 2**32 - 1, False, True, False), "freeze_layers": (0, None, False, True, True),
    "freeze_budget_pct": (0, 1000, False, False, True), "budget_pct": (0, 100, True, False, True),
    "budget_gain": (0, 100, True, False, False), "path_stage_epochs": (1, 10_000, False, True, False),
}
