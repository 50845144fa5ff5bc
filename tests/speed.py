"""How fast this machine is against the one the suite's time budget was set on.

A speed probe (a few training steps of EfficientNet-Lite0 at 32 px, what most of the suite does)
is timed when the session starts and when it ends; the slower of the two over the reference
machine's time is the *slowdown*. Two things use it:

- :func:`patience` scales a test's waits, so a slow or busy machine gets the time it needs
  instead of tripping a fixed timeout (subprocesses read it from ``TAPS_TEST_SLOWDOWN``);
- the suite's wall time divided by the slowdown is checked against the budget the README states
  (``--suite-budget-min``), which is then fair on fast and slow machines alike.
"""
from __future__ import annotations

import os
import statistics
import time

# The probe's median step on the reference machine: a 2-core AMD EPYC (Zen 3, AVX2), idle, the
# slower of the two machine types CI lands on.
REFERENCE_STEP_S = 0.22  # measured 0.199-0.228 s over six probes, idle
REFERENCE_MACHINE = "2-core AMD EPYC (Zen 3, AVX2), idle"
SLOWDOWN_ENV = "TAPS_TEST_SLOWDOWN"


def probe_step_seconds(steps: int = 7) -> float:
    """Median seconds of one SGD step of EfficientNet-Lite0 (random weights) on 32 × 32 × 32 px."""
    import timm
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
        times = []
        for _ in range(steps + 1):  # the first step warms the allocator up: not counted
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:])
    finally:
        torch.random.set_rng_state(state)


def slowdown() -> float:
    """This machine's slowdown against the reference (1.0 when no probe ran, as in a subprocess
    started outside pytest)."""
    try:
        return max(0.05, float(os.environ.get(SLOWDOWN_ENV, "1")))
    except ValueError:
        return 1.0


def patience(seconds: float) -> float:
    """A wait of ``seconds`` on the reference machine, as long as this machine needs (never shorter)."""
    return seconds * max(1.0, slowdown())
