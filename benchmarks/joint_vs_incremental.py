"""Incremental vs joint multi-task TAPS on the two offline tasks (Fashion-MNIST, digits).

    python benchmarks/joint_vs_incremental.py            # the offline default settings (~5 min on 2 CPUs)
    python benchmarks/joint_vs_incremental.py --quick    # a smoke run in seconds

Incremental: one TAPS run per task against the frozen pretrained base, served together by a
MultiTaskModel. Joint (Eq. 4): one run training the shared base with both tasks' deltas. Prints
accuracy, task-specific layers and the parameter multiplier of each, and writes
benchmarks/results/joint_vs_incremental.json.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import parser, print_table, write_result

TASKS = ["fashion-mnist", "digits"]


def main(argv=None) -> int:
    p = parser(__doc__, "32 px, 64 images, 1 epoch")
    p.add_argument("--lam", type=float, default=0.3)
    args = p.parse_args(argv)

    from taps.inference import evaluate_on
    from taps.method.multitask import MultiTaskModel
    from taps.training.trainer import TrainConfig, train

    base = TrainConfig.from_flat(lam=args.lam)
    if args.quick:
        base = base.updated(resolution=32, train_subset=64, eval_subset=64, batch_size=16, epochs=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        incremental = {t: train(base.updated(dataset=t, out_dir=f"{tmp}/{t}")) for t in TASKS}
        inc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        joint = train(base.updated(tasks=TASKS, out_dir=f"{tmp}/joint"))
        joint_s = time.perf_counter() - t0
        for kind, packs, seconds in (("incremental", {t: r.pack_path for t, r in incremental.items()}, inc_s),
                                     ("joint", joint.task_packs, joint_s)):
            mt = MultiTaskModel.from_packs(packs)
            report = mt.report()
            for t in TASKS:
                acc = evaluate_on(mt.task_model(t), mt.task_metadata(t), eval_subset=base.data.eval_subset)["accuracy"]
                s = report.tasks[t]
                rows.append({"setting": kind, "task": t, "test_acc": acc, "active_layers": s.active_layers,
                             "task_specific_layers_pct": s.task_specific_layers_pct,
                             "additional_params_pct": s.additional_params_pct,
                             "multiplier": report.parameter_multiplier, "train_seconds": seconds})
    print(f"λ={args.lam}, {base.data.resolution} px, {base.data.train_subset} images per task, {base.optim.epochs} epochs")
    print_table([("setting", "setting", "<"), ("task", "task", "<"), ("test_acc", "test acc", ">.3f"),
                 ("active_layers", "layers", ">d"), ("additional_params_pct", "% add. params", ">.1f"),
                 ("multiplier", "multiplier", ">.2f"), ("train_seconds", "train s", ">.0f")], rows)
    write_result("joint_vs_incremental", args, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
