"""The gate decision I_τ(s) = [s ≥ τ], made in one place and in one dtype.

A score tensor compares with τ in its own dtype and a Python float in float64, so a score at τ
(0.7 is 0.69999999 in float32) was on in a layer and off in the budget or the trainer's count.
Every decision (layers, budget, trainer, the workbench's figures and tables) goes through
``gate_on``, which compares in float32. Torch is not imported here, so the dashboard can use it.
"""
from __future__ import annotations

import sys

import numpy as np


def gate_on(score, threshold: float):
    """Whether a gate is on: ``score ≥ threshold`` in float32. A tensor or an array gives an
    elementwise result of its kind; one number gives a bool."""
    tau = np.float32(threshold)
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch is not None and isinstance(score, torch.Tensor):
        return score.to(torch.float32) >= float(tau)  # float(tau) is exact in float32
    if isinstance(score, np.ndarray):
        return score.astype(np.float32) >= tau
    return bool(np.float32(score) >= tau)
