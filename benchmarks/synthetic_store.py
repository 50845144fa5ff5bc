"""A run store filled with many realistic-looking runs, written through the store's own API:
the workload for the dashboard's render-time benchmark and for app tests with many runs."""
from __future__ import annotations

import math
import os
import random

from workbench.store import RunStore

LAYERS = 49  # EfficientNet-Lite0's gated layers


def populate(store: RunStore, runs: int, steps: int, *, layers: int = LAYERS, sweep_size: int = 5,
             seed: int = 0) -> list[str]:
    """``runs`` finished runs (sweeps of ``sweep_size``: TAPS over λ, plus baselines), each with
    ``steps`` recorded steps of per-layer scores and 3 epochs. Returns the run ids."""
    rng = random.Random(seed)
    names = [f"blocks.{i // 4}.{i % 4}.conv" for i in range(layers)]
    ids = []
    for i in range(runs):
        sweep = f"sweep-{i // sweep_size:04d}"
        k = i % sweep_size
        method = "finetune" if k == sweep_size - 1 else "taps"
        lam = 10 ** (k - 2) if method == "taps" else None
        config = {"backbone": "efficientnet_lite0", "dataset": "fashion-mnist", "method": method,
                  "lam": lam if lam is not None else 0.3, "lr": 0.003, "epochs": 3, "threshold": 0.1}
        # As the launcher and the engine tell the store: a baseline has no λ, whatever its config says.
        run_id = store.create_run(config, name=None if method == "taps" else "finetune", sweep=sweep, kind="single",
                                  lam=lam)
        store.mark_running(run_id, os.getpid(), None, device="CPU (2 cores)")
        store.record_start(run_id, {"layer_names": names, "layer_kinds": ["conv"] * layers,
                                    "layer_params": [1000 + j for j in range(layers)],
                                    "classes": [str(c) for c in range(10)], "total_steps": steps,
                                    "train_size": 2000, "val_size": 200, "test_size": 1000,
                                    "config": config, "start_epoch": 0})
        keep = 1.0 if method != "taps" else 1 / (1 + lam)
        final = [0.3 if rng.random() < keep else 0.02 for _ in range(layers)]
        batch = []
        for s in range(1, steps + 1):
            f = s / steps
            scores = [0.15 + (v - 0.15) * f for v in final]
            batch.append({"step": s, "epoch": min(2, 3 * (s - 1) // steps), "loss": 2 * math.exp(-3 * f) + 0.3,
                          "task_loss": 2 * math.exp(-3 * f), "penalty": 0.3 * f, "lam_now": lam or 0, "lr": 0.003,
                          "active_layers": sum(v >= 0.1 for v in scores), "images_per_sec": 100.0,
                          "t": 1.7e9 + s * 0.3, "scores": scores, "total_steps": steps})
            if len(batch) == 500:
                store.record_steps(run_id, batch)
                batch = []
        store.record_steps(run_id, batch)
        active = sum(v >= 0.1 for v in final)
        acc = 0.78 + 0.04 * active / layers + rng.uniform(-0.01, 0.01)
        for e in range(3):
            store.record_epoch(run_id, {"epoch": e, "epochs": 3, "train_loss": 1.0 / (e + 1), "train_acc": acc,
                                        "val_acc": acc, "test_acc": acc, "task_specific_layers_pct": 100 * active / layers,
                                        "additional_params_pct": 3 + 97 * active / layers, "active_layers": active,
                                        "seconds": 20.0})
        store.finish(run_id, "done", metrics={
            "test_acc": acc, "val_acc": acc, "train_acc": acc, "task_specific_layers_pct": 100 * active / layers,
            "additional_params_pct": 3 + 97 * active / layers, "active_layers": active, "gated_layers": layers,
            "base_params": 3_400_000, "head_params": 12_810, "lam": lam})
        ids.append(run_id)
    return ids
