"""What a TAPS training step costs against full fine-tuning: time per step and peak memory.

    python benchmarks/training_overhead.py                 # four backbones on this machine's device
    python benchmarks/training_overhead.py --backbones resnet50 --repeat 20
    python benchmarks/training_overhead.py --quick         # a smoke run in seconds

Five steps on the same backbone, batch and resolution, with the same SGD (momentum 0.9):
  fine-tune         the plain model, every weight trained — the reference
  TAPS, all on      gated layers, scores and the sparsity penalty, every gate on (step 0: the
                    most expensive state, every layer composes w̄ + δ)
  TAPS, half off    every other gate off, as after some training: off layers skip the composition
                    and their δ gets no gradient
  TAPS, recompute   all on, with TAPSConfig(recompute_weights=True): w̄ + δ composed again in the
                    backward pass instead of kept — one weight copy less, one more add per layer
  TAPS, frozen, half off   every other gate off with the gates frozen, as in the last 30 % of a run
                    (after gate_freeze): scores take no gradient, so off layers run as frozen
                    layers (no weight gradient) and on layers skip ⟨∂L/∂w, δ⟩
Times are medians of interleaved repetitions, in --processes fresh processes per setting (on CPU
forked from this script once torch is imported, so no process pays the imports again); the
ratio shown is the median of the per-process ratios, with their range. Peak memory is measured in fresh
processes per step kind, over the two steps after the first, two ways: the most bytes held by
tensors at once (on CPU every allocation traced, see allocated_memory.py; on CUDA
``max_memory_allocated``), and what the process holds (on CPU the peak resident set above the process
before the model was built; on CUDA ``max_memory_reserved``). Beside them, what TAPS costs in
units of W, the gated weights' bytes: TAPS holds w̄ and δ where fine-tuning holds one weight, so a
TAPS step in float32 with the same optimizer is expected to hold fine-tuning's peak + W (+ W more
for the composed weights it keeps unless it recomputes them). On a GPU the steps run with
bfloat16 autocast; convolutions are channels-last on CPU and GPU, as the trainer does. Writes
benchmarks/results/training_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import interleaved, median_ms, parser, print_table, write_result

# (backbone, resolution, batch) on CPU: the convolutional nets at the workbench's CPU default
# (64 px, batch 32), the ViT at its native 224 px; then two nets at 224 px, where activations
# outweigh the weights as in the paper's setting — TAPS's extra weight copies matter less there.
CPU_SETTINGS = [("efficientnet_lite0", 64, 32), ("resnet50", 64, 32), ("densenet121", 64, 32),
                ("vit_small_patch16_224", 224, 8), ("efficientnet_lite0", 224, 8), ("resnet50", 224, 8)]
GPU_SETTINGS = [(name, 224, 64) for name in ("efficientnet_lite0", "resnet50", "densenet121", "vit_small_patch16_224")]


def resolution_per_backbone(settings: list[tuple[str, int, int]]) -> dict[str, int]:
    """Each backbone of ``settings`` with its first resolution, in order: the scripts that take one
    setting per backbone (inference, storage) use these."""
    first: dict[str, int] = {}
    for backbone, resolution, _ in settings:
        first.setdefault(backbone, resolution)
    return first


KINDS = ("finetune", "taps", "taps_half_off", "taps_recompute", "taps_frozen_half_off")
LABELS = {"finetune": "fine-tune", "taps": "TAPS, all on", "taps_half_off": "TAPS, half off",
          "taps_recompute": "TAPS, all on, recompute", "taps_frozen_half_off": "TAPS, half off, gates frozen"}


def build_step(kind: str, backbone: str, resolution: int, batch: int, device):
    """A closure doing one training step of ``kind``, as the trainer does it."""
    import torch
    import torch.nn.functional as F

    import taps
    from taps.backbones import create_backbone
    from taps.method.layers import prime_gates, set_gates_learning
    from taps.training.trainer import TrainConfig, build_optimizer, mixed_precision_dtype, uses_channels_last
    from tests.helpers import scramble

    torch.manual_seed(0)
    model = create_backbone(backbone, 10, "none")
    penalty, layers = None, []
    if kind == "finetune":
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    else:
        taps.adapt(model, taps.TAPSConfig(recompute_weights=kind == "taps_recompute"))
        if kind in ("taps_half_off", "taps_frozen_half_off"):
            scramble(model, off_every=2)
        optimizer = build_optimizer(model, TrainConfig.from_flat(lr=1e-3))
        penalty = taps.SparsityPenalty(model.to(device))
        layers = [m for _, m in taps.gated_layers(model)]
        set_gates_learning([m.score for m in layers], kind != "taps_frozen_half_off")
    amp_dtype = mixed_precision_dtype(device, True)
    model = model.to(device).train()
    x = torch.rand(batch, 3, resolution, resolution, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if uses_channels_last(device, amp_dtype):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        if penalty is not None:
            loss = loss + penalty(0.3)
        loss.backward()
        optimizer.step()
        if layers:  # as the trainer: every gate state from one read of the scores
            prime_gates(layers, torch.stack([m.score.detach() for m in layers]).tolist())

    return step


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_child(measure: str, kind: str, backbone: str, resolution: int, batch: int, device_name: str) -> dict:
    """Peak bytes of the steps after the first (weights, deltas, gradients, momentum, activations),
    in a fresh process so that nothing else is counted. ``measure`` is "allocated" (bytes held by
    tensors) or "resident" (what the process holds); on CUDA one process gives both, and on CPU
    each has its own, since tracing allocations costs resident memory of its own."""
    import torch

    import taps.training.trainer  # noqa: F401  (imports are not what a step holds)
    from benchmarks.allocated_memory import AllocationTrace

    device = torch.device(device_name)
    if device.type == "cuda":
        step = build_step(kind, backbone, resolution, batch, device)
        step()  # gradients and momentum buffers now exist
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(), step()
        torch.cuda.synchronize()
        return {"allocated": torch.cuda.max_memory_allocated(), "resident": torch.cuda.max_memory_reserved()}
    if measure == "allocated":
        with AllocationTrace() as trace:  # from before the model exists, so all it holds is counted
            step = build_step(kind, backbone, resolution, batch, device)
            step()
            with trace.window():
                step(), step()
        return {"allocated": trace.peak_bytes()}
    before = _rss_bytes("VmRSS")
    step = build_step(kind, backbone, resolution, batch, device)
    step()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    step(), step()
    return {"resident": _rss_bytes("VmHWM") - before}


def gated_weight_bytes(backbone: str) -> int:
    """W: the bytes of the weights TAPS gates, i.e. of all the deltas."""
    import taps
    from taps.backbones import create_backbone

    model = taps.adapt(create_backbone(backbone, 10, "none"), taps.TAPSConfig())
    return sum(layer.delta.numel() * layer.delta.element_size() for _, layer in taps.gated_layers(model))


def step_times_child(backbone: str, resolution: int, batch: int, repeat: int, device_name: str) -> dict:
    """Seconds per step of each kind, interleaved, all three models in this (fresh) process."""
    import torch

    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = {kind: build_step(kind, backbone, resolution, batch, device) for kind in KINDS}
    return interleaved(steps, repeat, sync=sync)


CHILDREN = {"memory-child": "peak_memory_child", "time-child": "step_times_child",
            "weights-child": "gated_weight_bytes"}


def in_fresh_process(what: str, *args) -> str:
    """Run this script's ``--<what>`` child and return its last line of output. Each backbone is
    timed in its own process, as a training worker runs: the CPU allocator's state left by an
    earlier backbone (glibc moves its mmap threshold as large blocks are freed) otherwise shifts
    the ratios by several percent."""
    out = subprocess.run([sys.executable, __file__, f"--{what}", *map(str, args)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} {' '.join(map(str, args))} failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def in_forked_processes(jobs: list[tuple], at_once: int) -> list:
    """Each job ``(what, *args)`` in a process of its own, forked from this one once torch and the
    project are imported, ``at_once`` at a time. A fork is the fresh process ``in_fresh_process``
    starts, less the seconds of imports each of those pays: nothing but imports happened before it
    (no torch op has run here, so no OpenMP pool has to survive the fork). CPU only: a process
    that has touched CUDA cannot be forked."""
    import taps.training.trainer  # noqa: F401  (what every child imports first)
    import tests.helpers  # noqa: F401
    from benchmarks import allocated_memory  # noqa: F401

    results: list = [None] * len(jobs)
    waiting, running = list(enumerate(jobs)), {}
    while waiting or running:
        while waiting and len(running) < at_once:
            index, (what, *args) = waiting.pop(0)
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: run the job, send its JSON answer, leave without cleanup
                os.close(read_end)
                try:
                    answer, code = {"result": globals()[CHILDREN[what]](*args)}, 0
                except BaseException:  # noqa: BLE001 - the parent reports it
                    answer, code = {"error": traceback.format_exc()}, 1
                with os.fdopen(write_end, "w") as out:
                    json.dump(answer, out)
                os._exit(code)
            os.close(write_end)
            running[pid] = (index, what, args, os.fdopen(read_end))
        pid, _ = os.wait()
        index, what, args, answer_file = running.pop(pid)
        with answer_file:  # answers are a few hundred bytes: they fit in the pipe before the child exits
            answer = json.loads(answer_file.read() or '{"error": "the child died without an answer"}')
        if "error" in answer:
            raise RuntimeError(f"{what} {' '.join(map(str, args))} failed:\n{answer['error'][-2000:]}")
        results[index] = answer["result"]
    return results


def in_children(jobs: list[tuple], device, at_once: int = 1, fork: bool = True) -> list:
    """Each job ``(what, *args)`` in a fresh process: forked on CPU unless ``fork`` is False, a new
    interpreter otherwise."""
    if fork and device.type == "cpu":
        return in_forked_processes(jobs, at_once)
    with ThreadPoolExecutor(at_once) as pool:
        return list(pool.map(lambda job: json.loads(in_fresh_process(*job)), jobs))


def peak_memory_per_kind(backbone: str, resolution: int, batch: int, device,
                         at_once: int = len(KINDS)) -> dict[str, dict[str, int]]:
    """Each kind's peaks, each in its own process. A peak is the process's own, so ``at_once``
    processes run at the same time: that shortens the wait and changes no number. The resident
    set is read in new interpreters: a forked child maps the shared libraries' pages as it first
    touches them, so the code its steps run would count as memory the steps hold."""
    measures = ("both",) if device.type == "cuda" else ("allocated", "resident")
    peaks: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    for measure in measures:
        jobs = [("memory-child", measure, kind, backbone, resolution, batch, str(device)) for kind in KINDS]
        for kind, peak in zip(KINDS, in_children(jobs, device, at_once, fork=measure == "allocated")):
            peaks[kind].update(peak)
    return peaks


def main(argv=None) -> int:
    p = parser(__doc__, "EfficientNet-Lite0 at 32 px, batch 4, 2 repetitions")
    p.add_argument("--backbones", nargs="+", default=None, help="only these backbones (default: all settings)")
    p.add_argument("--repeat", type=int, default=None, help="timed steps per kind (default 10 on CPU, 30 on GPU)")
    p.add_argument("--resolution", type=int, default=None, help="override every backbone's resolution")
    p.add_argument("--batch", type=int, default=None, help="override every backbone's batch")
    p.add_argument("--processes", type=int, default=3,
                   help="fresh timing processes per setting; ratios are the median over them (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--no-time", action="store_true", help="skip the timing processes (memory only)")
    p.add_argument("--memory-processes", type=int, default=len(KINDS),
                   help=f"peak-memory processes at once (default {len(KINDS)}; fewer where they would not fit in RAM)")
    p.add_argument("--memory-child", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--time-child", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--weights-child", nargs=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_processes < 1:
        p.error(f"--memory-processes must be at least 1, not {args.memory_processes}")
    if args.memory_child:
        measure, kind, backbone, resolution, batch, device = args.memory_child
        print(json.dumps(peak_memory_child(measure, kind, backbone, int(resolution), int(batch), device)))
        return 0
    if args.time_child:
        backbone, resolution, batch, repeat, device = args.time_child
        print(json.dumps(step_times_child(backbone, int(resolution), int(batch), int(repeat), device)))
        return 0
    if args.weights_child:
        print(json.dumps(gated_weight_bytes(*args.weights_child)))
        return 0

    from taps.backbones import device_description, resolve_device

    device = resolve_device("auto")
    settings = GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS
    if args.quick:
        settings, args.repeat, args.processes = [("efficientnet_lite0", 32, 4)], 2, 1
    settings = [(b, args.resolution or r, args.batch or n) for b, r, n in settings
                if args.backbones is None or b in args.backbones]
    settings = list(dict.fromkeys(settings))  # overrides can make two settings the same
    repeat = args.repeat or (30 if device.type == "cuda" else 10)
    timing = "memory only" if args.no_time else f"{repeat} interleaved repetitions per step kind"
    print(f"device: {device_description(device)}; {timing}")
    rows = []
    for backbone, resolution, batch in settings:
        # Per process: the median step of each kind, and its ratio to fine-tuning in that process.
        medians = [] if args.no_time else [{kind: median_ms(t) for kind, t in times.items()} for times in
                                           in_children([("time-child", backbone, resolution, batch, repeat,
                                                         str(device))] * args.processes, device)]
        peaks = {} if args.no_memory else peak_memory_per_kind(backbone, resolution, batch, device,
                                                               args.memory_processes)
        # In a child too: a torch op here would leave thread pools that later forks cannot use.
        weight_bytes = None if args.no_memory else in_children([("weights-child", backbone)], device)[0]
        for kind in KINDS:
            row = {"backbone": backbone, "resolution": resolution, "batch": batch, "kind": kind, "step": LABELS[kind]}
            if medians:
                ratios = [m[kind] / m["finetune"] for m in medians]
                row |= {"median_ms": statistics.median(m[kind] for m in medians), "time_ratio": statistics.median(ratios),
                        "time_ratio_range": [min(ratios), max(ratios)],
                        "ratio_range": "{:.3f}–{:.3f}".format(min(ratios), max(ratios))}
            if peaks:
                allocated, resident = peaks[kind]["allocated"], peaks[kind]["resident"]
                row |= {"peak_mb": allocated / 2**20, "memory_ratio": allocated / peaks["finetune"]["allocated"],
                        "weight_copies_over_finetune": (allocated - peaks["finetune"]["allocated"]) / weight_bytes,
                        "resident_mb": resident / 2**20, "resident_ratio": resident / peaks["finetune"]["resident"],
                        "gated_weights_mb": weight_bytes / 2**20,
                        "finetune_plus_w_ratio": 1 + weight_bytes / peaks["finetune"]["allocated"]}
            rows.append(row)
        print(f"\n{backbone}, {resolution} px, batch {batch}")
        print_table([("step", "step", "<"), ("median_ms", "median ms", ">.1f"), ("time_ratio", "× fine-tune", ">.3f"),
                     ("ratio_range", f"over {args.processes} processes", ">"),
                     ("peak_mb", "peak allocated MiB", ">.0f"), ("memory_ratio", "× fine-tune", ">.3f"),
                     ("weight_copies_over_finetune", "+ W over fine-tune", ">.2f"),
                     ("resident_mb", "peak resident MiB", ">.0f"), ("resident_ratio", "× fine-tune", ">.3f")],
                    rows[-len(KINDS):])
        if peaks:
            print(f"W, the gated weights: {weight_bytes / 2**20:.1f} MiB; fine-tuning's peak + W: "
                  f"{rows[-1]['finetune_plus_w_ratio']:.3f} × fine-tune")
    write_result("training_overhead", args, {"device": device_description(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
