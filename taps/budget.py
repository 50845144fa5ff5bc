"""Budget mode: the user names what a task may cost, the trainer finds the λ.

Training with a budget is a constrained problem: minimise the task loss subject to the task's
cost c (% task-specific layers, or % additional parameters) being at most b. The sparsity
penalty is the Lagrangian term of that constraint relaxed to the scores — with per-layer
weights 1/L for a layer budget and numel_i/N for a parameter budget — and λ is its multiplier,
found by dual ascent on the measured cost: λ ← max(0, λ + η·(c − b)/100) after every step
while the gates learn. ``project_to_budget`` then makes the end state honour the budget: at
the gate freeze the highest-scoring layers that fit are kept on and the rest switched off, so
the run ends at the budget (within one layer's worth), not just under it.
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


def project_to_budget(costs: LayerCosts, target_pct: float, margin: float = 1e-3) -> tuple[list[int], list[int]]:
    """The gate state within ``target_pct`` closest to it: layers taken by score, highest first,
    while the cost stays within the target. Layers left out are switched off (score just below
    τ), taken layers that were off are switched back on (just at τ + margin), so a frozen gate
    keeps its state. Returns the indices switched (on, off). The controller's λ ranks the layers
    and brings the cost near the target; this makes the end state honour it from both sides — an
    overshoot (too many layers off) is as much a miss as too many on."""
    scores = [float(m.score.detach()) for m in costs.layers]
    before = costs.active(scores)
    keep = [False] * len(scores)
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        keep[i] = True
        if costs.cost_pct(keep) > target_pct:
            keep[i] = False  # too big: a smaller layer further down may still fit (parameter budgets)
    switched_on, switched_off = [], []
    for i, (was, now) in enumerate(zip(before, keep)):
        layer = costs.layers[i]
        if now and not was:
            layer.score.data.fill_(layer.threshold + margin)
            switched_on.append(i)
        elif was and not now:
            layer.score.data.fill_(layer.threshold - margin)
            switched_off.append(i)
    return switched_on, switched_off
