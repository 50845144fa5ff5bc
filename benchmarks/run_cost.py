"""What a whole TAPS run costs against a whole fine-tuning run, on the offline default.

    python benchmarks/run_cost.py                  # fine-tuning and TAPS λ ∈ {0.3, 1}, the README's settings
    python benchmarks/run_cost.py --quick          # a tiny model on digits, in seconds

training_overhead.py times single steps in fixed states. A run moves through two: while the
gates learn (the first gate_freeze of the steps, 70 % by default) a TAPS step does more than a
fine-tuning step; once they are frozen, off layers train like frozen layers (no weight gradient)
and on layers skip ⟨∂L/∂w, δ⟩, so a step costs less the more layers λ switched off. This trains
each method with the trainer itself and reports the median step time in each phase, the wall
time of the run (evaluation included) and its ratio to fine-tuning's. Fine-tuning is the
workbench's own method: every gate fixed on, δ trained, no scores — the run a user compares with. Runs alternate between
methods, --repeats times, so drifts of a shared machine hit them alike. Writes
benchmarks/results/run_cost.json.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import parser, print_table, write_result


class StepClock:
    """Seconds between consecutive steps of one epoch (the first step of an epoch follows an
    evaluation, so it is left out), split at the gate freeze."""

    def __init__(self, gate_freeze: float | None):
        self.gate_freeze, self.freeze_at, self.last, self.learning, self.frozen = gate_freeze, 0, None, [], []

    def on_start(self, event):  # one stage: the trainer's freeze_step is ⌈gate_freeze · steps⌉
        self.freeze_at = (math.ceil(self.gate_freeze * event.total_steps) if self.gate_freeze is not None
                          else event.total_steps)
        self.last = None

    def on_step(self, event):
        now = time.perf_counter()
        if self.last is not None:
            (self.learning if event.step <= self.freeze_at else self.frozen).append(now - self.last)
        self.last = now

    def on_epoch(self, event):
        self.last = None


def run_once(config) -> dict:
    from taps.training.trainer import train

    clock = StepClock(config.sparsity.gate_freeze if config.method == "taps" else None)
    t0 = time.perf_counter()
    result = train(config, [clock])
    return {"seconds": time.perf_counter() - t0, "learning_ms": 1000 * statistics.median(clock.learning),
            "frozen_ms": 1000 * statistics.median(clock.frozen) if clock.frozen else None,
            "learning_steps": len(clock.learning), "frozen_steps": len(clock.frozen),
            "active_layers": result.metrics["active_layers"], "test_acc": result.metrics["test_acc"]}


def main(argv=None) -> int:
    p = parser(__doc__, "test_resnet on digits at 32 px, one repeat")
    p.add_argument("--lams", type=float, nargs="+", default=[0.3, 1.0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    from taps.training.trainer import TrainConfig

    base = TrainConfig()  # the README's offline default
    if args.quick:
        from tests.helpers import FAST_RUN

        base, args.repeats = TrainConfig.from_flat(**FAST_RUN), 1
    methods = {"fine-tune": dict(method="finetune"),
               **{f"TAPS λ = {lam:g}": dict(method="taps", lam=lam) for lam in args.lams}}
    runs = {name: [] for name in methods}
    for _ in range(args.repeats):  # alternating: every method sees the same machine
        for name, change in methods.items():
            runs[name].append(run_once(base.updated(**change)))
    reference = statistics.median(r["seconds"] for r in runs["fine-tune"])
    reference_step = statistics.median(r["learning_ms"] for r in runs["fine-tune"])
    rows = []
    for name, done in runs.items():
        frozen = [r["frozen_ms"] for r in done if r["frozen_ms"] is not None]
        seconds = statistics.median(r["seconds"] for r in done)
        rows.append({"method": name, "seconds": seconds, "run_ratio": seconds / reference,
                     "learning_ms": statistics.median(r["learning_ms"] for r in done),
                     "frozen_ms": statistics.median(frozen) if frozen else None,
                     "frozen_ratio": statistics.median(frozen) / reference_step if frozen else None,
                     "active_layers": done[-1]["active_layers"], "test_acc": statistics.mean(r["test_acc"] for r in done),
                     "per_run": done})
    data = base.data
    print(f"{base.backbone}, {data.dataset}, {data.resolution} px, {data.train_subset} images, {base.optim.epochs} epochs, "
          f"batch {base.optim.batch_size}; median of {args.repeats} alternating runs")
    print_table([("method", "method", "<"), ("learning_ms", "step ms, gates learn", ">.1f"),
                 ("frozen_ms", "step ms, gates frozen", ">.1f"), ("frozen_ratio", "frozen ÷ fine-tune step", ">.3f"),
                 ("active_layers", "active layers", ">d"), ("seconds", "run s", ">.1f"),
                 ("run_ratio", "run ÷ fine-tune run", ">.3f")], rows)
    write_result("run_cost", args, {"config": base.to_dict(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
