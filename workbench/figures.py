"""The workbench's pictures, as Plotly figures: the app and the notebooks draw the same ones.

Every function takes plain data (lists and dicts as the run store returns them) and returns a
``plotly.graph_objects.Figure``; nothing here reads the store or knows about Streamlit.

- :func:`loss_figure` — task loss, penalty and total loss per training step;
- :func:`accuracy_figure` — train / val / test accuracy per epoch;
- :func:`heatmap_figure` — the active-layer heatmap, layers × training steps;
- :func:`frontier_figure` — accuracy vs % task-specific layers (or % additional parameters)
  across λ, with baselines as reference lines and the Pareto front highlighted (paper Fig. 2);
- :func:`layer_patterns_figure` — which layers each run made task-specific (paper Fig. 3/5/6),
  with a row of layer types for transformers (Fig. 4).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

from taps.method.gate import gate_on
from taps.training.points import PointKind

__all__ = [
    "AXIS_TITLES", "KIND_COLORS", "loss_figure", "accuracy_figure", "heatmap_figure", "frontier_figure",
    "layer_patterns_figure", "pareto_front", "downsample",
    "PointKind",  # re-exported: the kinds of the points these figures draw, for pages that label them
]

AXIS_TITLES = {
    "task_specific_layers_pct": "% task-specific layers",
    "additional_params_pct": "% additional parameters",
    "test_acc": "test accuracy",
    "val_acc": "validation accuracy",
}
# Layer types of stats.layer_kind, in the order the legend lists them.
KIND_COLORS = {"conv": "#4C78A8", "attention-qkv": "#F58518", "attention-proj": "#E45756",
               "mlp": "#54A24B", "linear": "#B279A2"}
REFERENCE_METHODS = {"finetune": ("full fine-tuning", "dash"), "feature_extractor": ("feature extractor", "dot")}
# Points of their own marker, by (point kind, method).
OTHER_SERIES = {(PointKind.RUN, "bn_only"): ("BN + head", "diamond"),
                (PointKind.RUN, "manual_freeze"): ("manual freeze", "square"),
                (PointKind.JOINT_TASK, "taps"): ("joint TAPS", "star"),
                (PointKind.JOINT_TASK, "finetune"): ("joint fine-tuning", "cross")}
TAPS_COLOR = "#1f77b4"
PATH_COLOR = "#d62728"
BUDGET_COLOR = "#2ca02c"
DOMINATED_COLOR = "#9ecae1"
# Off below τ, on at or above it: two flat colours with the boundary at the threshold.
GATE_SCALE = [[0, "#f0f0f0"], [0.5, "#f0f0f0"], [0.5, TAPS_COLOR], [1, TAPS_COLOR]]


def _layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    # Title on the left, legend on the right above the plot: they never overlap in a half-width column.
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", y=0.98, yanchor="top"), height=height,
                      margin=dict(l=10, r=10, t=60 if title else 30, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))
    return fig


def downsample(rows: Sequence, max_points: int) -> list:
    """At most ``max_points`` evenly spaced items, always keeping the last (the newest step):
    live pages redraw a bounded window however long the run."""
    n = len(rows)
    if n <= max_points:
        return list(rows)
    stride = -(-n // max_points)
    picked = list(rows[::stride])
    if picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    return picked


def loss_figure(steps: Sequence[dict], *, tasks: Sequence[str] = (), title: str | None = "Loss",
                height: int = 300) -> go.Figure:
    """Task loss, sparsity penalty (λ·mean|s| after the warm-up ramp) and their sum per step;
    for a joint run (``tasks``), each task's own loss too."""
    fig = go.Figure()
    x = np.array([s["step"] for s in steps])
    for key, name, dash in (("task_loss", "task loss" if not tasks else "Σ task losses", None),
                            ("penalty", "penalty", "dot"), ("loss", "total", "dash")):
        y = np.array([s.get(key) for s in steps], dtype=float)  # None → nan: a gap in the line
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines", line=dict(dash=dash)))
    for k, task in enumerate(tasks):
        y = np.array([(s.get("task_losses") or [None] * len(tasks))[k] for s in steps], dtype=float)
        fig.add_trace(go.Scatter(x=x, y=y, name=task, mode="lines", line=dict(width=1)))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="loss", rangemode="tozero")
    return _layout(fig, title, height)


def accuracy_figure(epochs: Sequence[dict], *, title: str | None = "Accuracy",
                    height: int = 300) -> go.Figure:
    fig = go.Figure()
    x = [e["epoch"] + 1 for e in epochs]
    for key, name in (("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")):
        fig.add_trace(go.Scatter(x=x, y=[e.get(key) for e in epochs], name=name, mode="lines+markers"))
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title="accuracy", tickformat=".0%")
    return _layout(fig, title, height)


def _layer_labels(layer_names: Sequence[str]) -> list[str]:
    return [f"{i} · {name}" for i, name in enumerate(layer_names)]


SCORE_RANGE_PERCENTILE = 95


def heatmap_figure(steps: Sequence[int], scores: Sequence[Sequence[float]], layer_names: Sequence[str], *,
                   threshold: float = 0.1, mode: str = "score", title: str | None = "Active layers",
                   height: int | None = None) -> go.Figure:
    """Layers (rows, input at the top) × training steps (columns). ``mode="score"`` colours each
    cell by its gate score on a scale centred at the threshold τ (blue: on, red: off);
    ``mode="gate"`` shows on/off only. Hover names the layer, the step and the score."""
    if mode not in ("score", "gate"):
        raise ValueError(f"mode must be 'score' or 'gate', got {mode!r}")
    n_layers = len(layer_names)
    # numpy arrays: plotly validates and serialises them as binary, lists element by element.
    z = np.asarray(scores, dtype=np.float32).reshape(len(steps), n_layers).T
    common = dict(x=np.asarray(steps), y=_layer_labels(layer_names), z=z,
                  hovertemplate="layer %{y}<br>step %{x}<br>score %{z:.3f}<extra></extra>")
    if mode == "gate":
        common["z"] = gate_on(z, threshold).astype(np.int8)
        common["hovertemplate"] = "layer %{y}<br>step %{x}<br>%{z}<extra>1: on, 0: off</extra>"
        trace = go.Heatmap(**common, zmin=0, zmax=1, colorscale=GATE_SCALE,
                           colorbar=dict(tickvals=[0.25, 0.75], ticktext=["off", "on"], len=0.5))
    else:
        # Centred on τ; the range covers the scores that occur (95th percentile of their distance
        # to τ), not the farthest one: a single outlier used to wash every other cell out to white.
        span = max(0.02, float(np.percentile(np.abs(z - threshold), SCORE_RANGE_PERCENTILE)) if z.size else 0.05)
        trace = go.Heatmap(**common, colorscale="RdBu", zmid=threshold, zmin=threshold - span,
                           zmax=threshold + span, colorbar=dict(title="score", len=0.6))
    fig = go.Figure(trace)
    fig.update_yaxes(title="layer (input → head)", autorange="reversed", showticklabels=n_layers <= 60,
                     tickfont=dict(size=11, color="#222"))  # layer names readable, not 8 px light grey
    fig.update_xaxes(title="step")
    return _layout(fig, title, height or max(260, min(900, 12 * n_layers + 120)))


def pareto_front(points: Iterable[dict], x: str, y: str) -> list[dict]:
    """The points no other point beats (fewer-or-equal x *and* higher-or-equal y, one strictly),
    in increasing x: the best accuracy for each budget."""
    pts = sorted((p for p in points if p.get(x) is not None and p.get(y) is not None),
                 key=lambda p: (p[x], -p[y]))
    front, best = [], float("-inf")
    for p in pts:
        if p[y] > best:
            front.append(p)
            best = p[y]
    return front


def _label(point: dict) -> str:
    return f"λ={point['lam']:g}" if point.get("lam") is not None else (point.get("name") or point["run_id"])


def frontier_figure(points: Sequence[dict], *, x: str = "task_specific_layers_pct", y: str = "test_acc",
                    title: str | None = "Accuracy vs task-specific layers",
                    height: int = 420) -> go.Figure:
    """Frontier points as :meth:`RunStore.frontier` returns them (one dataset). TAPS runs are
    points labelled by λ, the Pareto front of all runs a line; full fine-tuning and the feature
    extractor are horizontal reference lines; BN-only and manual freeze are their own markers.
    Every point carries its run id in ``customdata`` (click → open the run)."""
    if x not in ("task_specific_layers_pct", "additional_params_pct"):
        raise ValueError(f"x must be task_specific_layers_pct or additional_params_pct, got {x!r}")
    usable = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    fig = go.Figure()
    front = pareto_front(usable, x, y)
    front_ids = {p["run_id"] for p in front}
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[p[x] for p in front], y=[p[y] for p in front], mode="lines",
                                 name="Pareto front", line=dict(color="#222", width=1.5, dash="solid"),
                                 hoverinfo="skip"))
    single = [p for p in usable if p.get("kind", PointKind.RUN) == PointKind.RUN]  # hand-made points: runs
    taps_points = [p for p in single if p.get("method") == "taps"]
    for on_front, name, color in ((True, "TAPS", TAPS_COLOR), (False, "TAPS (dominated)", DOMINATED_COLOR)):
        pts = [p for p in taps_points if (p["run_id"] in front_ids) == on_front]
        if pts:
            fig.add_trace(go.Scatter(
                x=[p[x] for p in pts], y=[p[y] for p in pts], mode="markers+text", name=name,
                text=[_label(p) for p in pts], textposition="top center", customdata=[p["run_id"] for p in pts],
                marker=dict(size=11, color=color, line=dict(width=1, color="#fff")),
                hovertemplate="%{text}<br>%{x:.1f}" + ("%" if x.endswith("pct") else "") +
                              "<br>%{y:.3f}<br>run %{customdata}<extra></extra>"))
    unit = "%" if x.endswith("pct") else ""
    stages = [p for p in usable if p.get("kind") == PointKind.PATH_STAGE]
    for run_id in dict.fromkeys(p["run_id"] for p in stages):
        pts = sorted((p for p in stages if p["run_id"] == run_id),
                     key=lambda p: p["lam"])  # one run's stages, joined: its frontier
        fig.add_trace(go.Scatter(
            x=[p[x] for p in pts], y=[p[y] for p in pts], mode="lines+markers+text", name="λ path (one run)",
            text=[_label(p) for p in pts], textposition="bottom center", customdata=[run_id] * len(pts),
            marker=dict(size=9, symbol="triangle-up", color=PATH_COLOR), line=dict(color=PATH_COLOR, dash="dot"),
            hovertemplate="λ path, %{text}<br>%{x:.1f}" + unit + "<br>%{y:.3f}<br>run %{customdata}<extra></extra>"))
    budget = [p for p in usable if p.get("kind") == PointKind.BUDGET]
    if budget:
        fig.add_trace(go.Scatter(
            x=[p[x] for p in budget], y=[p[y] for p in budget], mode="markers+text", name="TAPS budget",
            text=[f"≤{p['budget_pct']:g}% {'layers' if p.get('budget_kind') == 'layers' else 'params'}"
                  for p in budget], textposition="top center", customdata=[p["run_id"] for p in budget],
            marker=dict(size=11, symbol="hexagon", color=BUDGET_COLOR, line=dict(width=1, color="#fff")),
            hovertemplate="budget %{text}<br>%{x:.1f}" + unit + "<br>%{y:.3f}<br>run %{customdata}<extra></extra>"))
    for (kind, method), (name, symbol) in OTHER_SERIES.items():
        pts = [p for p in usable if p.get("kind", PointKind.RUN) == kind and p.get("method") == method]
        if pts:
            fig.add_trace(go.Scatter(
                x=[p[x] for p in pts], y=[p[y] for p in pts], mode="markers", name=name,
                customdata=[p["run_id"] for p in pts], marker=dict(size=11, symbol=symbol),
                hovertemplate=name + "<br>%{x:.1f}<br>%{y:.3f}<br>run %{customdata}<extra></extra>"))
    for method, (name, dash) in REFERENCE_METHODS.items():
        pts = [p for p in single if p.get("method") == method]
        if not pts:
            continue
        best = max(pts, key=lambda p: p[y])
        fig.add_hline(y=best[y], line=dict(dash=dash, color="#666"),
                      annotation_text=f"{name} {best[y]:.3f}", annotation_position="bottom right")
        # An invisible point on the line keeps it clickable and in the hover.
        fig.add_trace(go.Scatter(x=[best[x]], y=[best[y]], mode="markers", name=name,
                                 customdata=[best["run_id"]], marker=dict(size=9, symbol="x", color="#666"),
                                 hovertemplate=name + "<br>%{x:.1f}<br>%{y:.3f}<br>run %{customdata}"
                                                      "<extra></extra>"))
    xs, ys = [p[x] for p in usable], [p[y] for p in usable]
    # Padding on both sides: points at 0 % (feature extractor, large λ) and their labels stay whole.
    x_hi = max(xs + [1.0])
    fig.update_xaxes(title=AXIS_TITLES[x], range=[-0.06 * x_hi, 1.08 * x_hi])
    if ys:  # pad around the data, within [0, 1]: one point alone would otherwise span −0.5…1
        pad = max(0.02, 0.1 * (max(ys) - min(ys)))
        fig.update_yaxes(range=[max(0.0, min(ys) - pad), min(1.0, max(ys) + pad)])
    fig.update_yaxes(title=AXIS_TITLES.get(y, y))
    fig.update_layout(clickmode="event+select")
    return _layout(fig, title, height)


def layer_patterns_figure(rows: Sequence[dict], layer_names: Sequence[str], *,
                          layer_kinds: Sequence[str] | None = None, threshold: float = 0.1,
                          title: str | None = "Task-specific layers", height: int | None = None) -> go.Figure:
    """One row per run (``{"label": str, "scores": [L floats]}``), one column per layer from
    input to head; a cell is filled when that run made the layer task-specific. With more than
    one layer type (transformers) a first row shows each layer's type: qkv / proj / mlp."""
    n = len(layer_names)
    kinds = list(layer_kinds) if layer_kinds else ["conv"] * n
    labels = [r["label"] for r in rows]
    z = [[int(gate_on(s, threshold)) for s in r["scores"]] for r in rows]
    custom = [[[name, kind, s] for name, kind, s in zip(layer_names, kinds, r["scores"])] for r in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=labels, customdata=custom, zmin=0, zmax=1, showscale=False, xgap=1, ygap=2,
        colorscale=GATE_SCALE, hovertemplate="%{y}<br>layer %{x}: %{customdata[0]} (%{customdata[1]})<br>"
                      "score %{customdata[2]:.3f}<extra></extra>"))
    distinct = list(dict.fromkeys(kinds))
    if len(distinct) > 1:
        # Layer types as a coloured strip above the runs (paper Fig. 4), one legend entry per type.
        for kind in distinct:
            xs = [i for i, k in enumerate(kinds) if k == kind]
            fig.add_trace(go.Scatter(x=xs, y=["layer type"] * len(xs), mode="markers", name=kind,
                                     marker=dict(symbol="square", size=9, color=KIND_COLORS.get(kind, "#999")),
                                     customdata=[layer_names[i] for i in xs],
                                     hovertemplate="layer %{x}: %{customdata}<br>" + kind + "<extra></extra>"))
        fig.update_yaxes(categoryorder="array", categoryarray=["layer type"] + labels)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="layer (input → head)", range=[-0.5, n - 0.5])
    return _layout(fig, title, height or max(200, 28 * (len(rows) + (len(distinct) > 1)) + 110))
