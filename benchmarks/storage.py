"""What a task costs on disk: task pack bytes against a full fine-tuned checkpoint.

    python benchmarks/storage.py            # four backbones, and the λ sweep of accuracy_frontier
    python benchmarks/storage.py --quick    # a smoke run in seconds

Two tables:
  by λ        the task packs the accuracy-frontier benchmark trained (EfficientNet-Lite0 on
              Fashion-MNIST, one per λ and baseline), read from results/accuracy_frontier.json
              when it exists
  by share    for each backbone, packs written by ``taps.save_pack`` with 0, 10, 25, 50 and 100 %
              of the gated layers task-specific (the last ones, input→head order, the pattern
              TAPS tends to learn), against the backbone's full float32 safetensors checkpoint
Writes benchmarks/results/storage.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, parser, print_table, write_result
from benchmarks.training_overhead import CPU_SETTINGS, resolution_per_backbone

SHARES = (0, 10, 25, 50, 100)


def full_checkpoint_bytes(model, tmp: Path) -> int:
    """A fine-tuned copy of the whole model, as one would otherwise store it per task."""
    from safetensors.torch import save_file

    path = tmp / "full.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.stat().st_size


def by_share(backbone: str, tmp: Path) -> list[dict]:
    import torch

    import taps
    from taps.backbones import create_backbone
    from taps.training.methods import fix_gates

    model = create_backbone(backbone, 10, "none")
    full = full_checkpoint_bytes(model, tmp)
    taps.adapt(model)
    names = [n for n, _ in taps.gated_layers(model)]
    rows = []
    for share in SHARES:
        k = round(len(names) * share / 100)
        fix_gates(model, set(names[len(names) - k:]))
        with torch.no_grad():
            for _, layer in taps.gated_layers(model):
                layer.delta.normal_(0, 1e-3)  # a trained delta does not compress; neither does this
        pack = taps.save_pack(model, tmp / f"{share}.safetensors")
        stats = taps.summarize(model)
        size = pack.stat().st_size
        rows.append({"backbone": backbone, "share_pct": share, "layers": f"{k}/{len(names)}",
                     "additional_params_pct": stats.additional_params_pct, "pack_mb": size / 1e6,
                     "full_mb": full / 1e6, "ratio": size / full})
    return rows


def by_lambda(frontier: Path) -> list[dict]:
    if not frontier.exists():
        return []
    data = json.loads(frontier.read_text())
    full = next((r["pack_mb"] for r in data["rows"] if r["method"] == "finetune"), None)
    return [{"run": r["label"], "additional_params_pct": r["additional_params_pct"], "pack_mb": r["pack_mb"],
             "ratio": r["pack_mb"] / full if full else None} for r in data["rows"]]


def parse_args(argv=None):
    p = parser(__doc__, "EfficientNet-Lite0 only")
    p.add_argument("--backbones", nargs="+", default=list(resolution_per_backbone(CPU_SETTINGS)))
    p.add_argument("--frontier", type=Path, default=RESULTS / "accuracy_frontier.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.backbones = ["efficientnet_lite0"]
    lam_rows = by_lambda(args.frontier)
    if lam_rows:
        print(f"task packs of {args.frontier.name} (a full fine-tuned task is the finetune row)")
        print_table([("run", "run", "<"), ("additional_params_pct", "% add. params", ">.1f"),
                     ("pack_mb", "pack MB", ">.2f"), ("ratio", "× full", ">.3f")], lam_rows)
    share_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            rows = by_share(backbone, Path(tmp))
            share_rows += rows
            print(f"\n{backbone}: full checkpoint {rows[0]['full_mb']:.1f} MB")
            print_table([("layers", "task layers", "<"), ("additional_params_pct", "% add. params", ">.1f"),
                         ("pack_mb", "pack MB", ">.2f"), ("ratio", "× full", ">.3f")], rows)
    write_result("storage", args, {"by_lambda": lam_rows, "by_share": share_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
