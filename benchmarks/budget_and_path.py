"""Budget mode and the λ path against an ordinary λ sweep, on the offline default.

    python benchmarks/budget_and_path.py            # ~30 min on 2 CPUs (3 seeds)
    python benchmarks/budget_and_path.py --quick    # a smoke run in seconds

Budget: runs with a target of --budgets % task-specific layers (λ found by the trainer); each is
compared with the λ-sweep run of the most similar size, and with the sweep's frontier line read
at the budget run's size. λ path: one run through --path λ values
(stage 0 trains the usual epochs, each later stage --stage-epochs more, warm-started), each
stage's snapshot a frontier point, compared with independent runs at the same λ — accuracy, and
the compute of each frontier (steps, wall time). The λ sweep is trained here too, so every number
in the tables comes from this one process. Seeds 0, 1 and 2 by default: tables show means (± sd
over seeds); a gap is read per seed, against that seed's own sweep. Writes
benchmarks/results/budget_and_path.json and draws results/budget_and_path.png.
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

POINT_KEYS = ("test_acc", "val_acc", "task_specific_layers_pct", "additional_params_pct", "active_layers")


def timed_train(config) -> tuple[object, float, int]:
    from taps.training.trainer import train
    from tests.helpers import Recorder

    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(config.updated(out_dir=tmp), [rec])
        return result, time.perf_counter() - t0, rec.start.total_steps


def sweep_accuracy_at(sweep: list[dict], size_pct: float) -> float | None:
    """The λ sweep's test accuracy at ``size_pct`` % task-specific layers, read off the line
    through its points (None outside their range): a run of exactly that size, had λ hit it."""
    pts = sorted((r["task_specific_layers_pct"], r["test_acc"]) for r in sweep)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= size_pct <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (size_pct - x0) / (x1 - x0)
    return None


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


def one_seed(base, args) -> dict:
    """The sweep, the path and the budget runs for one seed (``base.seed``)."""
    sweep = []
    for lam in args.path:
        result, seconds, steps = timed_train(base.updated(lam=lam))
        sweep.append({"seed": base.seed, "lam": lam, "seconds": seconds, "steps": steps,
                      **{k: result.metrics[k] for k in POINT_KEYS}})
        print(f"seed {base.seed} λ={lam:g}: test {result.metrics['test_acc']:.3f}, "
              f"{result.metrics['active_layers']} layers, {seconds:.0f} s", flush=True)

    result, path_s, path_steps = timed_train(base.updated(lam_path=args.path, path_stage_epochs=args.stage_epochs))
    path = [{"seed": base.seed, **{k: pt[k] for k in ("lam", *POINT_KEYS)}} for pt in result.metrics["path"]]
    for pt in path:
        twin = next(r for r in sweep if r["lam"] == pt["lam"])
        at_size = sweep_accuracy_at(sweep, pt["task_specific_layers_pct"])
        pt.update(sweep_test_acc=twin["test_acc"], sweep_layers_pct=twin["task_specific_layers_pct"],
                  acc_gap=pt["test_acc"] - twin["test_acc"], sweep_acc_at_size=at_size,
                  gap_at_size=None if at_size is None else pt["test_acc"] - at_size)
    print(f"seed {base.seed} path: " + ", ".join(f"λ={p['lam']:g} {p['test_acc']:.3f}" for p in path), flush=True)

    budget = []
    for target in args.budgets:
        result, seconds, _ = timed_train(base.updated(budget_pct=target, budget_kind="layers"))
        m = result.metrics
        near = min(sweep, key=lambda r: abs(r["task_specific_layers_pct"] - m["task_specific_layers_pct"]))
        at_size = sweep_accuracy_at(sweep, m["task_specific_layers_pct"])
        budget.append({"seed": base.seed, "budget_pct": target, "lam_final": m["lam_final"], "seconds": seconds,
                       **{k: m[k] for k in POINT_KEYS}, "within": m["task_specific_layers_pct"] <= target,
                       "error_pts": m["task_specific_layers_pct"] - target, "nearest_lam": near["lam"],
                       "nearest_layers_pct": near["task_specific_layers_pct"], "nearest_test_acc": near["test_acc"],
                       "sweep_acc_at_size": at_size, "gap_at_size": None if at_size is None else m["test_acc"] - at_size})
        print(f"seed {base.seed} budget ≤{target:g}%: {m['task_specific_layers_pct']:.1f}% layers, "
              f"λ→{m['lam_final']:.3g}, test {m['test_acc']:.3f}", flush=True)
    compute = {"sweep_steps": sum(r["steps"] for r in sweep), "sweep_seconds": sum(r["seconds"] for r in sweep),
               "path_steps": path_steps, "path_seconds": path_s, "single_run_steps": sweep[0]["steps"]}
    return {"sweep": sweep, "path": path, "budget": budget, "compute": compute}


def mean_rows(rows: list[dict], key: str) -> list[dict]:
    """Per value of ``key``: the mean of every number over seeds, and the spread of accuracy and gap."""
    out = []
    for value in dict.fromkeys(r[key] for r in rows):
        group = [r for r in rows if r[key] == value]
        row = {key: value, "seeds": len(group)}
        for k, v in group[0].items():
            if k not in (key, "seed") and isinstance(v, (int, float)) and not isinstance(v, bool):
                vals = [g[k] for g in group if g.get(k) is not None]
                row[k] = statistics.fmean(vals) if vals else None
        for k in ("test_acc", "gap_at_size"):
            vals = [g[k] for g in group if g.get(k) is not None]
            row[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        if "within" in group[0]:
            row["within"] = all(g["within"] for g in group)
        out.append(row)
    return out


def main(argv=None) -> int:
    p = parser(__doc__, "32 px, 64 images, 1 epoch, budget 25 %, a 2-stage path, one seed")
    p.add_argument("--budgets", type=float, nargs="+", default=[10.0, 25.0, 50.0])
    p.add_argument("--path", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    p.add_argument("--stage-epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)

    from taps.training.trainer import TrainConfig

    base = TrainConfig()
    if args.quick:
        base = base.updated(resolution=32, train_subset=64, eval_subset=64, batch_size=16, epochs=1)
        args.budgets, args.path, args.seeds = [25.0], [0.3, 1.0], [0]

    runs = [one_seed(base.updated(seed=seed), args) for seed in args.seeds]
    sweep_all, path_all, budget_all = ([row for r in runs for row in r[part]] for part in ("sweep", "path", "budget"))
    sweep, path, budget = mean_rows(sweep_all, "lam"), mean_rows(path_all, "lam"), mean_rows(budget_all, "budget_pct")
    compute = {k: statistics.fmean(r["compute"][k] for r in runs) for k in runs[0]["compute"]}
    compute.update(path_vs_single_run=compute["path_steps"] / compute["single_run_steps"],
                   path_vs_sweep=compute["path_steps"] / compute["sweep_steps"])

    title = (f"{base.backbone} on {base.data.dataset}: {base.data.train_subset} images, {base.data.resolution} px, "
             f"{base.optim.epochs} epochs (+{args.stage_epochs} per later path stage), "
             f"mean of seeds {', '.join(map(str, args.seeds))}")
    print(f"\n{title}\n\nBudget mode (target: % task-specific layers)")
    print_table([("budget_pct", "budget %", ">g"), ("task_specific_layers_pct", "ended %", ">.1f"),
                 ("lam_final", "λ found", ">.3g"), ("test_acc", "test acc", ">.3f"), ("test_acc_sd", "± sd", ">.3f"),
                 ("sweep_acc_at_size", "sweep at same %", ">.3f"), ("gap_at_size", "gap", ">+.3f"),
                 ("gap_at_size_sd", "± sd", ">.3f")], budget)
    print("\nλ path (one run) against independent runs")
    print_table([("lam", "λ", ">g"), ("test_acc", "path acc", ">.3f"), ("task_specific_layers_pct", "path %", ">.1f"),
                 ("sweep_test_acc", "sweep acc", ">.3f"), ("sweep_layers_pct", "sweep %", ">.1f"),
                 ("sweep_acc_at_size", "sweep at path %", ">.3f"), ("gap_at_size", "gap there", ">+.3f"),
                 ("gap_at_size_sd", "± sd", ">.3f")], path)
    print(f"\ncompute per seed: λ sweep {compute['sweep_steps']:.0f} steps, {compute['sweep_seconds']:.0f} s; "
          f"λ path {compute['path_steps']:.0f} steps, {compute['path_seconds']:.0f} s "
          f"= {compute['path_vs_single_run']:.2f}× one run, {compute['path_vs_sweep']:.2f}× the sweep")
    write_result("budget_and_path", args, {"title": title, "sweep": sweep, "path": path, "budget": budget,
                                           "compute": compute, "per_seed": runs})
    save_figure(figure(sweep, path, budget, title), "budget_and_path", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
