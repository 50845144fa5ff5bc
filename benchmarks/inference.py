"""Inference cost of a TAPS task: merged against the plain backbone, and switching tasks.

    python benchmarks/inference.py                  # four backbones, batch 32
    python benchmarks/inference.py --quick          # a smoke run in seconds

Per backbone, forward time per batch (inference mode, eval) of:
  plain backbone      the pretrained model with the task's head — the reference
  merged task model   ``taps.merge``: w̄ + I·δ baked into plain layers (should be 1.00×)
  gated, unmerged     the training-time model, composing w̄ + δ every forward (for contrast)
  multi-task model    ``MultiTaskModel`` serving two task packs, forward for one task
and the cost of one task switch in the multi-task model. Each task state has half of its
layers task-specific. Medians of interleaved repetitions in one process.
Writes benchmarks/results/inference.json.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import interleaved, median_ms, parser, print_table, write_result
from benchmarks.training_overhead import CPU_SETTINGS, GPU_SETTINGS, resolution_per_backbone

KINDS = {"plain": "plain backbone", "merged": "merged task model", "gated": "gated, unmerged",
         "multitask": "multi-task model"}


def task_models(backbone: str, device, tmp: Path):
    """The four models of the table, all holding the same task in the same state."""
    import copy

    import torch

    import taps
    from taps.backbones import create_backbone
    from taps.method.multitask import MultiTaskModel
    from tests.helpers import scramble

    packs = {}
    for seed, task in enumerate(("a", "b")):
        torch.manual_seed(0)  # the same pretrained base for both tasks
        model = taps.adapt(create_backbone(backbone, 10, "none"))
        scramble(model, off_every=2, seed=seed)
        packs[task] = taps.save_pack(model.eval(), tmp / f"{task}.safetensors")
        if task == "a":
            gated = model
    torch.manual_seed(0)
    plain = create_backbone(backbone, 10, "none")  # the same base weights, never adapted
    multitask = MultiTaskModel(copy.deepcopy(plain))
    for task, pack in packs.items():
        multitask.add_task(task, pack)
    models = {"plain": plain, "merged": taps.merge(gated), "gated": gated, "multitask": multitask}
    for m in models.values():
        m.to(device).eval()
    models["multitask"].set_task("a")
    return models


def parse_args(argv=None):
    p = parser(__doc__, "EfficientNet-Lite0 at 32 px, batch 4, 3 repetitions")
    p.add_argument("--backbones", nargs="+", default=list(resolution_per_backbone(CPU_SETTINGS)))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=20)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    from taps.backbones import device_description, resolve_device

    device = resolve_device("auto")
    settings = GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS
    if args.quick:
        args.backbones, args.batch, args.repeat = ["efficientnet_lite0"], 4, 3
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device: {device_description(device)}; batch {args.batch}; {args.repeat} interleaved repetitions")
    rows = []
    for backbone in args.backbones:
        resolution = 32 if args.quick else resolution_per_backbone(settings).get(backbone, 64)
        with tempfile.TemporaryDirectory() as tmp:
            models = task_models(backbone, device, Path(tmp))
        x = torch.rand(args.batch, 3, resolution, resolution, device=device)
        mt = models["multitask"]

        def switch():  # two switches per call: a → b → a
            mt.set_task("b"), mt.set_task("a")

        with torch.inference_mode():
            same = torch.allclose(models["merged"](x), models["gated"](x), atol=1e-4) and \
                torch.allclose(mt(x), models["gated"](x), atol=1e-4)
            if not same:
                raise SystemExit(f"{backbone}: the merged, gated and multi-task models disagree")
            times = interleaved({**{k: (lambda m=m: m(x)) for k, m in models.items()}, "switch": switch},
                                args.repeat, sync=sync)
        plain_ms = median_ms(times["plain"])
        for kind, label in KINDS.items():
            ms = median_ms(times[kind])
            rows.append({"backbone": backbone, "resolution": resolution, "kind": kind, "model": label,
                         "median_ms": ms, "ratio": ms / plain_ms,
                         "spread_pct": 100 * statistics.pstdev(times[kind]) / statistics.mean(times[kind])})
        switch_ms = median_ms(times["switch"]) / 2
        rows.append({"backbone": backbone, "resolution": resolution, "kind": "switch", "model": "task switch",
                     "median_ms": switch_ms, "ratio": switch_ms / plain_ms})
        print(f"\n{backbone}, {resolution} px, batch {args.batch}")
        print_table([("model", "model", "<"), ("median_ms", "median ms", ">.2f"), ("ratio", "× plain", ">.3f"),
                     ("spread_pct", "± % (sd)", ">.1f")], [r for r in rows if r["backbone"] == backbone])
    write_result("inference", args, {"device": device_description(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
