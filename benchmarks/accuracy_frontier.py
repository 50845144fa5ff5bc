"""Accuracy against additional parameters: TAPS over λ and at a budget, the paper's baselines,
and LoRA (peft).

    python benchmarks/accuracy_frontier.py                          # the offline default (hanzi), 3 seeds
    python benchmarks/accuracy_frontier.py --dataset fashion-mnist  # another task
    python benchmarks/accuracy_frontier.py --seeds 0                # one seed
    python benchmarks/accuracy_frontier.py --quick                  # a smoke run in seconds

Every method trains the same pretrained EfficientNet-Lite0 (ImageNet weights) on the same
subset at the same resolution, epochs, batch and schedule (TrainConfig's defaults):
  --baselines (feature extractor, full fine-tuning)  the paper's baselines (taps.training.methods)
  TAPS λ ∈ --lams                                    learned layer selection
  TAPS budget --budget-pct % of layers               λ found during training (budget mode)
  manual freeze                                      the last k layers, k = the layers the budget
                                                     run kept (paper Table 10's comparison)
  LoRA r ∈ --ranks                                   Hugging Face peft on every 1×1 convolution
                                                     (the bulk of the weights), head and
                                                     normalisation layers trained as in TAPS
"Additional parameters" counts what a task adds to the shared backbone in every method: active
deltas (TAPS), LoRA factors, head, normalisation parameters and statistics — in % of the backbone.
LoRA's learning rate is chosen on the validation split of the first seed and rank from
{lr, 10·lr} (low-rank factors starting at zero learn slowly at full fine-tuning's lr); the
others use the defaults. Prints mean ± sd over seeds, draws the frontier to results/accuracy_frontier.png, and
writes benchmarks/results/accuracy_frontier.json.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import parser, print_table, save_figure, write_result


def train_lora(config, rank: int, lr: float) -> dict:
    """LoRA from peft on ``config``'s backbone and data, with the trainer's schedule, data and
    evaluation, so only the adaptation differs from the TAPS runs."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from torch import nn
    from torch.utils.data import DataLoader

    from taps.method.adaptation import find_head, norm_layers
    from taps.backbones import create_backbone, input_normalization
    from taps.method.stats import norm_state_numel
    from taps.training.schedule import build_scheduler
    from taps.training.trainer import Normalize, eval_loader, evaluate, load_task_data, prepare_run, seed_everything
    from taps.training.methods import set_train_mode

    _, device = prepare_run(config)
    data = load_task_data(config, config.data.dataset)
    model = create_backbone(config.backbone, len(data.classes), config.weights)
    head = find_head(model)
    base = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(head + "."))
    norms = norm_state_numel(model)
    head_params = sum(p.numel() for p in model.get_submodule(head).parameters())
    targets = [n for n, m in model.named_modules()
               if n != head and ((isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)
                                 or type(m) is nn.Linear)]
    normalize = Normalize(*input_normalization(model)).to(device)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets,
                                             modules_to_save=[head])).to(device)
    for _, norm in norm_layers(model):
        for p in norm.parameters():
            p.requires_grad_(True)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    optimizer = torch.optim.SGD([{"params": [p for p in model.parameters() if p.requires_grad], "name": "weights"}],
                                lr=lr, momentum=config.optim.momentum)
    steps_per_epoch = len(data.train) // config.optim.batch_size
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.optim.epochs, config.sparsity.gate_freeze)
    t0 = time.perf_counter()
    for epoch in range(config.optim.epochs):
        seed_everything(config.seed * 1000 + epoch)
        loader = DataLoader(data.train, batch_size=config.optim.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        set_train_mode(model, freeze_norm_stats=config.freezes_norm_stats)
        for images, labels in loader:
            loss = F.cross_entropy(model(normalize(images.to(device))), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    added = lora + head_params + norms
    return {"val_acc": evaluate(model, eval_loader(data.val, config, False), device, None, normalize),
            "test_acc": evaluate(model, eval_loader(data.test, config, False), device, None, normalize),
            "additional_params_pct": 100 * added / base, "task_specific_layers_pct": None,
            "pack_bytes": 4 * added, "seconds": time.perf_counter() - t0}


def train_method(config) -> dict:
    from taps.training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(config.updated(out_dir=tmp))
        seconds = time.perf_counter() - t0
        pack_bytes = Path(result.pack_path).stat().st_size
    m = result.metrics
    return {"val_acc": m["val_acc"], "test_acc": m["test_acc"], "additional_params_pct": m["additional_params_pct"],
            "task_specific_layers_pct": m["task_specific_layers_pct"], "active_layers": m["active_layers"],
            "pack_bytes": pack_bytes, "seconds": seconds}


def summarize_rows(runs: list[dict]) -> list[dict]:
    """Mean and sd over seeds, per method and setting, in the order first seen."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    rows = []
    for (method, setting), rs in groups.items():
        def mean(key):
            values = [r[key] for r in rs if r.get(key) is not None]
            return statistics.mean(values) if values else None

        acc = [r["test_acc"] for r in rs]
        rows.append({"method": method, "setting": setting, "label": f"{method} {setting}".strip(), "seeds": len(rs),
                     "test_acc": mean("test_acc"), "test_acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "val_acc": mean("val_acc"), "additional_params_pct": mean("additional_params_pct"),
                     "task_specific_layers_pct": mean("task_specific_layers_pct"),
                     "pack_mb": mean("pack_bytes") / 1e6, "seconds": mean("seconds")})
    return rows


COLORS = {"taps": "#d62728", "taps_budget": "#8c564b", "lora": "#1f77b4", "finetune": "#2ca02c", "feature_extractor": "#7f7f7f",
          "bn_only": "#9467bd", "manual_freeze": "#ff7f0e"}


def frontier_plot(rows: list[dict], title: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, color in COLORS.items():
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["additional_params_pct"])
        if pts:
            fig.add_trace(go.Scatter(
                x=[r["additional_params_pct"] for r in pts], y=[r["test_acc"] for r in pts], name=method,
                mode="lines+markers+text" if len(pts) > 1 else "markers+text",
                text=[r["setting"] for r in pts], textposition="top center",
                error_y=dict(type="data", array=[r["test_acc_sd"] for r in pts], visible=True),
                marker=dict(size=10, color=color), line=dict(color=color, width=1)))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="% additional parameters per task (log)",
                      yaxis_title="test accuracy (mean ± sd over seeds)", xaxis_type="log")
    return fig


def main(argv=None) -> int:
    p = parser(__doc__, "32 px, 64 images, 1 epoch, one seed, λ 1, LoRA r 4")
    p.add_argument("--dataset", default=None, help="default: TrainConfig's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baselines", nargs="*", default=["feature_extractor", "finetune"],
                   choices=["feature_extractor", "bn_only", "finetune"])
    p.add_argument("--lams", type=float, nargs="*", default=[0.3, 1.0, 3.0])
    p.add_argument("--budget-pct", type=float, default=25.0, help="budget run (% of layers); 0: none")
    p.add_argument("--ranks", type=int, nargs="*", default=[4, 16])
    args = p.parse_args(argv)

    from taps.training.trainer import TrainConfig

    base = TrainConfig.from_flat(**({"dataset": args.dataset} if args.dataset else {}))
    if args.quick:
        base = base.updated(resolution=32, train_subset=64, eval_subset=64, batch_size=16, epochs=1)
        args.seeds, args.lams, args.ranks = [0], [1.0], [4]
    runs, lora_lr = [], {}
    for seed in args.seeds:
        config = base.updated(seed=seed)

        def record(method, setting, result):
            runs.append({"method": method, "setting": setting, "seed": seed, **result})
            print(f"seed {seed}  {method:<18}{setting:<10} test {result['test_acc']:.3f}  "
                  f"+{result['additional_params_pct']:.1f}% params  {result['seconds']:.0f} s", flush=True)

        for method in args.baselines:
            record(method, "", train_method(config.updated(method=method)))
        for lam in args.lams:
            record("taps", f"λ={lam:g}", train_method(config.updated(method="taps", lam=lam)))
        if args.budget_pct:
            result = train_method(config.updated(method="taps", budget_pct=args.budget_pct))
            record("taps_budget", f"≤{args.budget_pct:g}%", result)
            record("manual_freeze", f"{result['active_layers']} layers",
                   train_method(config.updated(method="manual_freeze", freeze_layers=result["active_layers"])))
        for rank in args.ranks:
            if not lora_lr:  # chosen on the first seed's validation split, with the first rank
                tries = {lr: train_lora(config, rank, lr) for lr in (base.optim.lr, 10 * base.optim.lr)}
                lora_lr["lr"] = max(tries, key=lambda lr: tries[lr]["val_acc"])
                lora_lr["val_acc"] = {str(lr): t["val_acc"] for lr, t in tries.items()}
                result = tries[lora_lr["lr"]]
            else:
                result = train_lora(config, rank, lora_lr["lr"])
            record("lora", f"r={rank}", result)

    rows = summarize_rows(runs)
    title = (f"{base.backbone} on {base.data.dataset}: {base.data.train_subset} images, {base.data.resolution} px, "
             f"{base.optim.epochs} epochs, {len(args.seeds)} seed(s)")
    print(f"\n{title}")
    print_table([("label", "method", "<"), ("test_acc", "test acc", ">.3f"), ("test_acc_sd", "± sd", ">.3f"),
                 ("additional_params_pct", "% add. params", ">.1f"), ("task_specific_layers_pct", "% layers", ">.0f"),
                 ("pack_mb", "task MB", ">.2f"), ("seconds", "train s", ">.0f")], rows)
    write_result("accuracy_frontier", args, {"title": title, "lora_lr": lora_lr,
                                             "rows": rows, "runs": runs})
    save_figure(frontier_plot(rows, title), "accuracy_frontier", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
