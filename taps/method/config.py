"""The one configuration object of a TAPS adaptation (like PEFT's ``LoraConfig``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

PenaltyMode = Literal["layers", "params"]


def setting(default, help: str, *, choices: tuple | None = None):
    """A settings field with its documentation (and allowed values): the one place a setting is
    described, which ``python -m taps train --help`` shows. A list default gets a fresh copy."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TAPSConfig:
    """How a pretrained model is turned into a TAPS model.

    threshold:   τ; a layer is task-specific while its score s ≥ τ (paper: 0.1).
    score_init:  initial score of every layer; above τ so every layer starts on and the model at
                 step 0 computes exactly the pretrained function (delta = 0). Paper code: 0.15.
    include:     fnmatch patterns of module names to gate; empty means every Conv2d and Linear.
    exclude:     fnmatch patterns never gated. The classifier head is always excluded.
    penalty_mode: "layers" — λ/L·Σ|s_i| (Eq. 3, L = number of gated layers of this model);
                 "params" — λ·Σ (n_i/N)|s_i|, each score weighted by its layer's parameter share,
                 so λ targets bytes rather than layer count. Both have the same scale.
    train_norms: normalisation layers (BatchNorm, LayerNorm, GroupNorm) are task-specific
                 (trained and stored in the task pack), as in the paper.
    head:        module name of the classifier head; None finds it (timm metadata, then the last
                 Linear).
    recompute_weights: compose w̄ + δ again in the backward pass instead of keeping it (like
                 gradient checkpointing, for the weights): one weight-sized copy less in training
                 memory, one more add per active layer per step. Same gradients.
    """

    threshold: float = setting(0.1, "τ: a layer is task-specific while its score is ≥ τ")
    score_init: float = setting(0.15, "initial score of every layer; above τ, so step 0 is the pretrained model")
    include: list[str] = setting([], "fnmatch patterns of module names to gate; empty: every Conv2d and Linear")
    exclude: list[str] = setting([], "fnmatch patterns of module names never gated")
    penalty_mode: PenaltyMode = setting("layers", "layers: every layer costs the same (Eq. 3); params: a layer "
                                        "costs its share of the parameters", choices=("layers", "params"))
    train_norms: bool = setting(True, "normalisation layers are task-specific (trained, kept in the task pack), "
                                "as in the paper")
    head: str | None = setting(None, "module name of the classifier head; unset: found from the model")
    recompute_weights: bool = setting(False, "compose w̄ + δ again in the backward pass: one weight-sized copy "
                                      "less in memory, a few % more time, same gradients")

    def __post_init__(self) -> None:
        if self.penalty_mode not in ("layers", "params"):
            raise ValueError(f"penalty_mode must be 'layers' or 'params', got {self.penalty_mode!r}")
        for name in ("threshold", "score_init"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{name} must be a number, got {value!r}")
        self.include = list(self.include)
        self.exclude = list(self.exclude)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TAPSConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
