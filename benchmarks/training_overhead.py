"""What a TAPS training step costs against full fine-tuning: time per step and peak memory.

    python benchmarks/training_overhead.py                 # four backbones on this machine's device
    python benchmarks/training_overhead.py --backbones resnet50 --repeat 20
    python benchmarks/training_overhead.py --quick         # a smoke run in seconds

Three steps on the same backbone, batch and resolution, with the same SGD (momentum 0.9):
  fine-tune         the plain model, every weight trained — the reference
  TAPS, all on      gated layers, scores and the sparsity penalty, every gate on (step 0: the
                    most expensive state, every layer composes w̄ + δ)
  TAPS, half off    every other gate off, as after some training: off layers skip the composition
                    and their δ gets no gradient
Times are medians of interleaved repetitions in one process. Peak memory is measured in a fresh
process per step kind: on CPU the peak resident set (VmHWM, reset after the first step) above the
process before the model was built; on CUDA ``max_memory_allocated``. On a GPU the steps run with
bfloat16 autocast and channels_last, as the trainer does. Writes benchmarks/results/training_overhead.json.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import interleaved, median_ms, parser, print_table, write_result

# Per backbone: (resolution, batch) on CPU. The convolutional nets at the workbench's CPU default
# (64 px, batch 32); the ViT at its native 224 px, where its patch grid means something.
CPU_SETTINGS = {"efficientnet_lite0": (64, 32), "resnet50": (64, 32), "densenet121": (64, 32),
                "vit_small_patch16_224": (224, 8)}
GPU_SETTINGS = {name: (224, 64) for name in CPU_SETTINGS}
KINDS = ("finetune", "taps", "taps_half_off")
LABELS = {"finetune": "fine-tune", "taps": "TAPS, all on", "taps_half_off": "TAPS, half off"}


def build_step(kind: str, backbone: str, resolution: int, batch: int, device):
    """A closure doing one training step of ``kind``, as the trainer does it."""
    import torch
    import torch.nn.functional as F

    import taps
    from taps.backbones import create_backbone
    from taps.trainer import TrainConfig, build_optimizer, mixed_precision_dtype
    from tests.helpers import scramble

    torch.manual_seed(0)
    model = create_backbone(backbone, 10, "none")
    weights = None
    if kind == "finetune":
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    else:
        taps.adapt(model)
        if kind == "taps_half_off":
            scramble(model, off_every=2)
        optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
        weights = taps.penalty_weights(model).to(device)
    amp_dtype = mixed_precision_dtype(device, True)
    model = model.to(device).train()
    x = torch.rand(batch, 3, resolution, resolution, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if amp_dtype is not None:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        if weights is not None:
            loss = loss + taps.sparsity_penalty(model, 0.3, weights=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_child(kind: str, backbone: str, resolution: int, batch: int, device_name: str) -> int:
    """Peak bytes a training step of ``kind`` holds: weights, deltas, gradients, momentum and
    activations (run in a fresh process, so nothing else is counted)."""
    import torch

    import taps.trainer  # noqa: F401  (imports are not what a step holds)

    device = torch.device(device_name)
    before = _rss_bytes("VmRSS")
    step = build_step(kind, backbone, resolution, batch, device)
    step()  # gradients and momentum buffers now exist
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(), step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    step(), step()
    return _rss_bytes("VmHWM") - before


def measure_peak(kind: str, backbone: str, resolution: int, batch: int, device) -> int:
    out = subprocess.run([sys.executable, __file__, "--memory-child", kind, backbone, str(resolution), str(batch),
                          str(device)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {kind} on {backbone} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = parser(__doc__, "EfficientNet-Lite0 at 32 px, batch 4, 2 repetitions")
    p.add_argument("--backbones", nargs="+", default=list(CPU_SETTINGS))
    p.add_argument("--repeat", type=int, default=None, help="timed steps per kind (default 10 on CPU, 30 on GPU)")
    p.add_argument("--resolution", type=int, default=None, help="override every backbone's resolution")
    p.add_argument("--batch", type=int, default=None, help="override every backbone's batch")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        kind, backbone, resolution, batch, device = args.memory_child
        print(peak_memory_child(kind, backbone, int(resolution), int(batch), device))
        return 0

    import torch

    from taps.backbones import device_description, resolve_device

    device = resolve_device("auto")
    settings = GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS
    if args.quick:
        args.backbones, args.repeat, args.resolution, args.batch = ["efficientnet_lite0"], 2, 32, 4
    repeat = args.repeat or (30 if device.type == "cuda" else 10)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device: {device_description(device)}; {repeat} interleaved repetitions per step kind")
    rows = []
    for backbone in args.backbones:
        resolution, batch = settings.get(backbone, (64, 32))
        resolution, batch = args.resolution or resolution, args.batch or batch
        steps = {kind: build_step(kind, backbone, resolution, batch, device) for kind in KINDS}
        times = interleaved(steps, repeat, sync=sync)
        del steps
        reference = median_ms(times["finetune"])
        peaks = {} if args.no_memory else {kind: measure_peak(kind, backbone, resolution, batch, device)
                                           for kind in KINDS}
        for kind in KINDS:
            ms = median_ms(times[kind])
            rows.append({"backbone": backbone, "resolution": resolution, "batch": batch, "kind": kind,
                         "step": LABELS[kind], "median_ms": ms, "time_ratio": ms / reference,
                         "peak_mb": peaks[kind] / 2**20 if peaks else None,
                         "memory_ratio": peaks[kind] / peaks["finetune"] if peaks else None})
        print(f"\n{backbone}, {resolution} px, batch {batch}")
        print_table([("step", "step", "<"), ("median_ms", "median ms", ">.1f"), ("time_ratio", "× fine-tune", ">.3f"),
                     ("peak_mb", "peak MiB", ">.0f"), ("memory_ratio", "× fine-tune", ">.3f")],
                    [r for r in rows if r["backbone"] == backbone])
    write_result("training_overhead", args, {"device": device_description(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
