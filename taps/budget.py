"""Budget mode: the user names what a task may cost, the trainer finds the λ.

Training with a budget is a constrained problem: minimise the task loss subject to the task's
cost c (% task-specific layers, or % additional parameters) being at most b. The sparsity
penalty is the Lagrangian term of that constraint relaxed to the scores — with per-layer
weights 1/L for a layer budget and numel_i/N for a parameter budget — and λ is its multiplier,
found by dual ascent on the measured cost: λ ← max(0, λ + η·(c − b)/100) after every step
while the gates learn. ``cap_to_budget`` then makes the end state honour the budget exactly:
at the gate freeze, the lowest-scoring layers over budget are switched off.
"""
from __future__ import annotations

from torch import nn

from .adaptation import gated_layers
from .stats import summarize

BUDGET_KINDS = ("layers", "params")


class LayerCosts:
    """What each gated layer adds to a task, to price a set of active gates without a model walk."""

    def __init__(self, model: nn.Module, kind: str):
        if kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be 'layers' or 'params', got {kind!r}")
        self.kind = kind
        self.layers = [m for _, m in gated_layers(model)]
        self.numel = [m.delta.numel() for m in self.layers]
        stats = summarize(model)  # counted as the run's statistics count them
        self.fixed, self.base = stats.norm_params + stats.head_params, stats.base_params

    def cost_pct(self, active: list[bool]) -> float:
        """% task-specific layers, or % additional parameters (deltas, norms and head, as
        ``taps.summarize`` counts them), of this set of active gates."""
        if self.kind == "layers":
            return 100.0 * sum(active) / max(len(active), 1)
        return 100.0 * (self.fixed + sum(n for n, on in zip(self.numel, active) if on)) / self.base

    def active(self, scores: list[float]) -> list[bool]:
        return [s >= m.threshold for s, m in zip(scores, self.layers)]


class BudgetController:
    """λ by dual ascent on the measured cost; ``gain`` is the change of λ per step per 100
    points over budget."""

    def __init__(self, costs: LayerCosts, target_pct: float, gain: float, lam: float = 0.0):
        self.costs, self.target, self.gain, self.lam = costs, float(target_pct), float(gain), float(lam)

    def update(self, scores: list[float]) -> float:
        cost = self.costs.cost_pct(self.costs.active(scores))
        self.lam = max(0.0, self.lam + self.gain * (cost - self.target) / 100.0)
        return self.lam


def cap_to_budget(costs: LayerCosts, target_pct: float, margin: float = 1e-3) -> list[int]:
    """Switch off the lowest-scoring active layers until the cost is within ``target_pct``;
    returns the indices switched off. Scores are set just below τ, so a frozen gate stays off."""
    scores = [float(m.score.detach()) for m in costs.layers]
    active = costs.active(scores)
    switched = []
    for i in sorted((i for i, on in enumerate(active) if on), key=lambda i: scores[i]):
        if costs.cost_pct(active) <= target_pct:
            break
        active[i] = False
        layer = costs.layers[i]
        layer.score.data.fill_(layer.threshold - margin)
        switched.append(i)
    return switched
