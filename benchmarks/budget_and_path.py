"""Budget mode and the λ path against an ordinary λ sweep, on the offline default.

    python benchmarks/budget_and_path.py            # ~10 min on 2 CPUs
    python benchmarks/budget_and_path.py --quick    # a smoke run in seconds

Budget: runs with a target of --budgets % task-specific layers (λ found by the trainer); each is
compared with the λ-sweep run of the most similar size. λ path: one run through --path λ values
(stage 0 trains the usual epochs, each later stage --stage-epochs more, warm-started), each
stage's snapshot a frontier point, compared with independent runs at the same λ — accuracy, and
the compute of each frontier (steps, wall time). The λ sweep is trained here too (seed 0), so
every number in the tables comes from this one process. Writes benchmarks/results/budget_and_path.json
and draws results/budget_and_path.png.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import parser, print_table, save_figure, write_result

POINT_KEYS = ("test_acc", "val_acc", "task_specific_layers_pct", "additional_params_pct", "active_layers")


def timed_train(config) -> tuple[object, float, int]:
    from taps.trainer import train
    from tests.helpers import Recorder

    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(replace(config, out_dir=tmp), [rec])
        return result, time.perf_counter() - t0, rec.start.total_steps


def figure(sweep: list[dict], path: list[dict], budget: list[dict], title: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for rows, name, color, symbol in ((sweep, "independent runs (λ sweep)", "#1f77b4", "circle"),
                                      (path, "λ path (one run)", "#d62728", "triangle-up")):
        rows = sorted(rows, key=lambda r: r["lam"])
        fig.add_trace(go.Scatter(x=[r["task_specific_layers_pct"] for r in rows], y=[r["test_acc"] for r in rows],
                                 mode="lines+markers+text", name=name, text=[f"λ={r['lam']:g}" for r in rows],
                                 textposition="top center", marker=dict(size=10, color=color, symbol=symbol),
                                 line=dict(color=color, dash="dot" if symbol != "circle" else "solid")))
    fig.add_trace(go.Scatter(x=[r["task_specific_layers_pct"] for r in budget], y=[r["test_acc"] for r in budget],
                             mode="markers+text", name="budget runs", text=[f"≤{r['budget_pct']:g}%" for r in budget],
                             textposition="bottom center", marker=dict(size=11, color="#2ca02c", symbol="hexagon")))
    fig.update_layout(title=title, template="plotly_white", xaxis_title="% task-specific layers",
                      yaxis_title="test accuracy")
    return fig


def main(argv=None) -> int:
    p = parser(__doc__, "32 px, 64 images, 1 epoch, budget 25 %, a 2-stage path")
    p.add_argument("--budgets", type=float, nargs="+", default=[10.0, 25.0, 50.0])
    p.add_argument("--path", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    p.add_argument("--stage-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from taps.trainer import TrainConfig

    base = TrainConfig(seed=args.seed)
    if args.quick:
        base = replace(base, resolution=32, train_subset=64, eval_subset=64, batch_size=16, epochs=1)
        args.budgets, args.path = [25.0], [0.3, 1.0]

    sweep, sweep_s, sweep_steps = [], 0.0, 0
    for lam in args.path:
        result, seconds, steps = timed_train(replace(base, lam=lam))
        sweep.append({"lam": lam, "seconds": seconds, "steps": steps, **{k: result.metrics[k] for k in POINT_KEYS}})
        sweep_s, sweep_steps = sweep_s + seconds, sweep_steps + steps
        print(f"λ={lam:g}: test {result.metrics['test_acc']:.3f}, {result.metrics['active_layers']} layers, "
              f"{seconds:.0f} s", flush=True)

    result, path_s, path_steps = timed_train(replace(base, lam_path=args.path, path_stage_epochs=args.stage_epochs))
    path = [{k: pt[k] for k in ("lam", *POINT_KEYS)} for pt in result.metrics["path"]]
    for pt in path:
        twin = next(r for r in sweep if r["lam"] == pt["lam"])
        pt.update(sweep_test_acc=twin["test_acc"], sweep_layers_pct=twin["task_specific_layers_pct"],
                  acc_gap=pt["test_acc"] - twin["test_acc"])
    single_steps = sweep[0]["steps"]

    budget = []
    for target in args.budgets:
        result, seconds, _ = timed_train(replace(base, budget_pct=target, budget_kind="layers"))
        m = result.metrics
        near = min(sweep, key=lambda r: abs(r["task_specific_layers_pct"] - m["task_specific_layers_pct"]))
        budget.append({"budget_pct": target, "lam_final": m["lam_final"], "seconds": seconds,
                       **{k: m[k] for k in POINT_KEYS}, "within": m["task_specific_layers_pct"] <= target,
                       "error_pts": m["task_specific_layers_pct"] - target, "nearest_lam": near["lam"],
                       "nearest_layers_pct": near["task_specific_layers_pct"], "nearest_test_acc": near["test_acc"]})
        print(f"budget ≤{target:g}%: {m['task_specific_layers_pct']:.1f}% layers, λ→{m['lam_final']:.3g}, "
              f"test {m['test_acc']:.3f}", flush=True)

    title = (f"{base.backbone} on {base.dataset}: {base.train_subset} images, {base.resolution} px, "
             f"{base.epochs} epochs (+{args.stage_epochs} per later path stage), seed {args.seed}")
    print(f"\n{title}\n\nBudget mode (target: % task-specific layers)")
    print_table([("budget_pct", "budget %", ">g"), ("task_specific_layers_pct", "ended %", ">.1f"),
                 ("lam_final", "λ found", ">.3g"), ("test_acc", "test acc", ">.3f"),
                 ("nearest_lam", "sweep λ", ">g"), ("nearest_layers_pct", "its %", ">.1f"),
                 ("nearest_test_acc", "its acc", ">.3f")], budget)
    print("\nλ path (one run) against independent runs")
    print_table([("lam", "λ", ">g"), ("test_acc", "path acc", ">.3f"), ("task_specific_layers_pct", "path %", ">.1f"),
                 ("sweep_test_acc", "sweep acc", ">.3f"), ("sweep_layers_pct", "sweep %", ">.1f"),
                 ("acc_gap", "gap", ">+.3f")], path)
    compute = {"sweep_steps": sweep_steps, "sweep_seconds": sweep_s, "path_steps": path_steps,
               "path_seconds": path_s, "single_run_steps": single_steps,
               "path_vs_single_run": path_steps / single_steps, "path_vs_sweep": path_steps / sweep_steps}
    print(f"\ncompute: λ sweep {sweep_steps} steps, {sweep_s:.0f} s; λ path {path_steps} steps, {path_s:.0f} s "
          f"= {compute['path_vs_single_run']:.2f}× one run, {compute['path_vs_sweep']:.2f}× the sweep")
    write_result("budget_and_path", args, {"title": title, "sweep": sweep, "path": path, "budget": budget,
                                           "compute": compute})
    save_figure(figure(sweep, path, budget, title), "budget_and_path", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
