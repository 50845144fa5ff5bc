"""The one configuration object of a TAPS adaptation (like PEFT's ``LoraConfig``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

PenaltyMode = Literal["layers", "params"]


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

    threshold: float = 0.1
    score_init: float = 0.15
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    penalty_mode: PenaltyMode = "layers"
    train_norms: bool = True
    head: str | None = None
    recompute_weights: bool = False

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
