"""Budget mode: the user names what a task may cost, the trainer finds the λ.

Training with a budget is a constrained problem: minimise the task loss subject to the task's
cost c (% task-specific layers, or % additional parameters) being at most b. The sparsity
penalty is the Lagrangian term of that constraint relaxed to the scores — with per-layer
weights 1/L for a layer budget and numel_i/N for a parameter budget — and λ is its multiplier,
found by dual ascent on the measured cost: λ ← max(0, λ + η·(c − b_t)/100) after every step
while the gates learn, against a target b_t annealed from the starting cost down to b. ``project_to_budget`` then makes the end state honour the budget: at
the gate freeze the highest-scoring layers that fit are kept on and the rest switched off, so
the run ends at the budget (within one layer's worth), not just under it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..method.adaptation import gated_layers
from ..method.gate import gate_on
from ..method.stats import fixed_numel
from .train_config import BUDGET_KINDS



class LayerCosts:
    """What each gated layer adds to a task, to price a set of active gates without a model walk."""

    def __init__(self, model: nn.Module, kind: str):
        if kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be 'layers' or 'params', got {kind!r}")
        self.kind = kind
        self.layers = [m for _, m in gated_layers(model)]
        self.numel = [m.delta.numel() for m in self.layers]
        norms, head, self.base = fixed_numel(model)  # counted as the run's statistics count them
        self.fixed = norms + head

    def cost_pct(self, active: list[bool]) -> float:
        """% task-specific layers, or % additional parameters (deltas, norms and head, as
        ``taps.summarize`` counts them), of this set of active gates."""
        if self.kind == "layers":
            return 100.0 * sum(active) / max(len(active), 1)
        return 100.0 * (self.fixed + sum(n for n, on in zip(self.numel, active) if on)) / self.base

    def floor_pct(self) -> float:
        """The least this task can cost: every gate off (0 % of layers; for parameters, what the
        norms and the head alone cost, which every task pays)."""
        return self.cost_pct([False] * len(self.layers))

    def active(self, scores: list[float]) -> list[bool]:
        return [gate_on(s, m.threshold) for s, m in zip(scores, self.layers)]


class BudgetController:
    """λ by dual ascent on the measured cost; ``gain`` is the change of λ per step per 100
    points over the target.

    The target is annealed: it moves from the starting cost (every gate on) to the budget along
    a cubic over ``anneal_steps``, as gradual pruning schedules do, then holds. Aiming at the
    budget from step one overshoots — scores integrate λ, so by the time layers switch off λ has
    wound up, too many go off, and λ then falls to 0 — leaving the freeze to re-enable layers
    whose δ stopped training long before. Following a moving target keeps the error, and so λ,
    small, and switches layers off a few at a time, lowest score first.
    """

    def __init__(self, costs: LayerCosts, target_pct: float, gain: float, lam: float = 0.0,
                 anneal_steps: int = 0, start_pct: float = 100.0):
        self.costs, self.target, self.gain, self.lam = costs, float(target_pct), float(gain), float(lam)
        self.anneal_steps, self.start = int(anneal_steps), max(float(start_pct), float(target_pct))

    def target_at(self, step: int) -> float:
        """The cost aimed at after ``step`` steps: the start cost falling to the budget by a cubic."""
        if self.anneal_steps <= 0:
            return self.target
        left = max(0.0, 1.0 - step / self.anneal_steps)
        return self.target + (self.start - self.target) * left ** 3

    def update(self, scores: list[float], step: int | None = None) -> float:
        cost = self.costs.cost_pct(self.costs.active(scores))
        target = self.target if step is None else self.target_at(step)
        self.lam = max(0.0, self.lam + self.gain * (cost - target) / 100.0)
        return self.lam


def project_to_budget(costs: LayerCosts, target_pct: float, margin: float = 1e-3,
                      switch_on: bool = True) -> tuple[list[int], list[int]]:
    """The gate state within ``target_pct`` closest to it: layers taken by score, highest first,
    while the cost stays within the target. Layers left out are switched off (score just below
    τ), taken layers that were off are switched back on (just at τ + margin), so a frozen gate
    keeps its state; with ``switch_on=False`` only the switching off is done (a cap). Returns
    the indices switched (on, off). The controller's λ ranks the layers
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
    with torch.no_grad():  # an in-place update the gates see (it bumps the score's version)
        for i, (was, now) in enumerate(zip(before, keep)):
            layer = costs.layers[i]
            if now and not was and switch_on:
                layer.score.fill_(layer.threshold + margin)
                switched_on.append(i)
            elif was and not now:
                layer.score.fill_(layer.threshold - margin)
                switched_off.append(i)
    return switched_on, switched_off
