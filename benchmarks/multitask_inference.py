"""A multi-task model against the plain backbone: forward time per batch and task-switch cost.

    python benchmarks/multitask_inference.py            # EfficientNet-Lite0, batch 32 at 64 px
    python benchmarks/multitask_inference.py --quick

Two synthetic task packs (half of the layers task-specific each) on the pretrained base. Times
are medians over interleaved repetitions in one process, so the ratios compare like with like.
Writes benchmarks/results/multitask_inference.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.batch = 3, 4

    import torch

    import taps
    from taps.backbones import create_backbone
    from taps.multitask import MultiTaskModel
    from tests.helpers import scramble

    torch.set_num_threads(2)
    plain = create_backbone(args.backbone, 10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        packs = {}
        for k, name in enumerate(("a", "b")):
            model = create_backbone(args.backbone, 10)
            taps.adapt(model)
            scramble(model, off_every=2, seed=k)  # half the layers task-specific
            packs[name] = taps.save_pack(model.eval(), Path(tmp) / f"{name}.safetensors")
        mt = MultiTaskModel.from_packs(packs)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    plain_t, task_t, switch_t = [], [], []
    with torch.inference_mode():
        for _ in range(3):
            plain(x), mt(x, task="a")
        for i in range(args.repeat):
            t = time.perf_counter(); plain(x); plain_t.append(time.perf_counter() - t)
            t = time.perf_counter(); mt(x, task="a"); task_t.append(time.perf_counter() - t)
            t = time.perf_counter(); mt.set_task("b"); mt.set_task("a"); switch_t.append((time.perf_counter() - t) / 2)
    med = {k: statistics.median(v) * 1000 for k, v in (("plain", plain_t), ("task", task_t), ("switch", switch_t))}
    print(f"{args.backbone}, batch {args.batch} at {args.resolution} px, {args.repeat} repetitions, "
          f"{platform.machine()} CPU, 2 threads")
    print(f"{'':<34}{'median ms':>10}{'ratio':>8}")
    print(f"{'plain backbone forward':<34}{med['plain']:>10.2f}{1.0:>8.3f}")
    print(f"{'multi-task model forward (task a)':<34}{med['task']:>10.2f}{med['task'] / med['plain']:>8.3f}")
    print(f"{'switch task (a → b)':<34}{med['switch']:>10.3f}{med['switch'] / med['plain']:>8.3f}")
    out = ROOT / "benchmarks" / "results" / "multitask_inference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**vars(args), "median_ms": med, "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
