"""What TAPS adds to a training step, piece by piece, against the fine-tuning step it extends.

    python benchmarks/step_breakdown.py                    # three backbones, 64 px, batch 32
    python benchmarks/step_breakdown.py --quick            # a smoke run in seconds

End-to-end step ratios (training_overhead.py) scatter by several percent between processes on a
shared 2-core machine. The work TAPS adds to a step is small and deterministic, so it can be
timed on its own, tightly, beside the fine-tuning step it adds to (interleaved in one process):
  compose       w̄ + δ for every gated layer, into the layer's kept buffer (forward)
  score grads   ⟨∂L/∂w, δ⟩ for every gated layer, one dot product each (backward)
  autograd      the gate reads and the one custom Function node composing every layer (forward
                and backward), on 1-element tensors: Python and dispatch cost, independent of
                the layers' sizes
  penalty       λ·Σ w_i·|s_i| and its backward
Their sum over the fine-tuning step is the overhead TAPS must cost with every gate on; the
end-to-end measurement can only add noise to it. Writes benchmarks/results/step_breakdown.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import interleaved, median_ms, parser, print_table, write_result

SETTINGS = [("efficientnet_lite0", 64, 32), ("resnet50", 64, 32), ("densenet121", 64, 32)]
PIECES = ("compose", "score grads", "autograd", "penalty")


def pieces(backbone: str) -> dict:
    """A callable per piece of TAPS's extra work on ``backbone`` (every gate on)."""
    import torch

    import taps
    from taps.method import tensor_layout
    from taps.backbones import create_backbone
    from taps.method.composition import ComposeWeights
    from taps.method.layers import prime_gates

    # Channels-last, as the trainer keeps convolutions on CPU: the pieces walk weights in that layout.
    model = taps.adapt(create_backbone(backbone, 10, "none")).to(memory_format=torch.channels_last)
    layers = [m for _, m in taps.gated_layers(model)]
    prime_gates(layers, [float(m.score.detach()) for m in layers])  # as the trainer: no score read per layer
    for layer in layers:
        with torch.no_grad():
            layer.delta.normal_(0, 1e-3)
    buffers = [torch.empty_like(layer.weight) for layer in layers]  # as ComposeScratch keeps them
    grads = [torch.randn_like(layer.weight) for layer in layers]  # stand-ins for ∂L/∂w, laid out as w
    sparsity = taps.SparsityPenalty(model)
    tiny_weights = [torch.zeros(1) for _ in layers]
    tiny_deltas = [torch.zeros(1, requires_grad=True) for _ in layers]
    tiny_scores = [torch.tensor(0.5, requires_grad=True) for _ in layers]

    def compose():
        for layer, buf in zip(layers, buffers):
            torch.add(layer.weight, layer.delta.detach(), out=buf)  # as inside ComposeWeights.forward

    def score_grads():
        for layer, g in zip(layers, grads):
            tensor_layout.dot(g, layer.delta.detach())  # as inside ComposeWeights.backward

    def autograd_overhead():
        ons = tuple(layer.active for layer in layers)  # as taps.adapt's forward hook composes them
        outs = ComposeWeights.apply(ons, (None,) * len(layers), *tiny_weights, *tiny_deltas, *tiny_scores)
        torch.autograd.backward(outs, [torch.ones(1)] * len(outs))

    def penalty():
        sparsity(0.3).backward()

    return {"compose": compose, "score grads": score_grads, "autograd": autograd_overhead, "penalty": penalty}


def main(argv=None) -> int:
    p = parser(__doc__, "EfficientNet-Lite0 at 32 px, batch 4, 3 repetitions")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    settings = [("efficientnet_lite0", 32, 4)] if args.quick else SETTINGS
    repeat = 3 if args.quick else args.repeat

    import torch

    from benchmarks.training_overhead import build_step

    rows = []
    for backbone, resolution, batch in settings:
        candidates = {"fine-tune step": build_step("finetune", backbone, resolution, batch, torch.device("cpu")),
                      **pieces(backbone)}
        times = interleaved(candidates, repeat)
        step_ms = median_ms(times["fine-tune step"])
        part = {name: median_ms(times[name]) for name in PIECES}
        rows += [{"backbone": backbone, "piece": name, "ms": ms, "pct_of_step": 100 * ms / step_ms}
                 for name, ms in [("fine-tune step", step_ms), *part.items()]]
        total = sum(part.values())
        rows.append({"backbone": backbone, "piece": "TAPS adds", "ms": total, "pct_of_step": 100 * total / step_ms,
                     "expected_ratio": 1 + total / step_ms})
        print(f"\n{backbone}, {resolution} px, batch {batch}: fine-tuning step {step_ms:.1f} ms")
        print_table([("piece", "piece", "<"), ("ms", "ms", ">.2f"), ("pct_of_step", "% of the step", ">.2f")],
                    [r for r in rows if r["backbone"] == backbone and r["piece"] != "fine-tune step"])
    write_result("step_breakdown", args, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
