"""Incremental vs joint multi-task TAPS on the two offline tasks (Fashion-MNIST, digits).

    python benchmarks/joint_vs_incremental.py            # the offline default settings (~5 min on 2 CPUs)
    python benchmarks/joint_vs_incremental.py --quick    # a smoke run in seconds

Incremental: one TAPS run per task against the frozen pretrained base, served together by a
MultiTaskModel. Joint (Eq. 4): one run training the shared base with both tasks' deltas. Prints
accuracy, task-specific layers and the parameter multiplier of each, and writes
benchmarks/results/joint_vs_incremental.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASKS = ["fashion-mnist", "digits"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true", help="32 px, 200 images, 1 epoch")
    args = parser.parse_args(argv)

    from taps.inference import evaluate_on
    from taps.multitask import MultiTaskModel
    from taps.trainer import TrainConfig, train

    base = TrainConfig(lam=args.lam)
    if args.quick:
        base = replace(base, resolution=32, train_subset=200, eval_subset=100, epochs=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        incremental = {t: train(replace(base, dataset=t, out_dir=f"{tmp}/{t}")) for t in TASKS}
        inc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        joint = train(replace(base, tasks=TASKS, out_dir=f"{tmp}/joint"))
        joint_s = time.perf_counter() - t0
        for kind, packs, seconds in (("incremental", {t: r.pack_path for t, r in incremental.items()}, inc_s),
                                     ("joint", joint.task_packs, joint_s)):
            mt = MultiTaskModel.from_packs(packs)
            report = mt.report()
            for t in TASKS:
                acc = evaluate_on(mt.task_model(t), mt.task_metadata(t), eval_subset=base.eval_subset)["accuracy"]
                s = report.tasks[t]
                rows.append({"setting": kind, "task": t, "test_acc": acc, "active_layers": s.active_layers,
                             "task_specific_layers_pct": s.task_specific_layers_pct,
                             "additional_params_pct": s.additional_params_pct,
                             "multiplier": report.parameter_multiplier, "train_seconds": seconds})
    print(f"λ={args.lam}, {base.resolution} px, {base.train_subset} images per task, {base.epochs} epochs, "
          f"{platform.machine()} CPU")
    print(f"{'setting':<12}{'task':<15}{'test acc':>9}{'layers':>8}{'% add. params':>15}{'multiplier':>12}{'train s':>9}")
    for r in rows:
        print(f"{r['setting']:<12}{r['task']:<15}{r['test_acc']:>9.3f}{r['active_layers']:>5}/49"
              f"{r['additional_params_pct']:>15.1f}{r['multiplier']:>12.2f}{r['train_seconds']:>9.0f}")
    out = ROOT / "benchmarks" / "results" / "joint_vs_incremental.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"lam": args.lam, "quick": args.quick, "rows": rows,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
