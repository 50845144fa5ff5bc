"""Frontier: accuracy against task-specific layers (or additional parameters) across λ, with
the baselines as reference lines and the Pareto front highlighted (paper Fig. 2)."""
from __future__ import annotations

import streamlit as st

from workbench import figures, ui
from workbench.figures import PointKind
from workbench.summaries import compute_caption, run_label

POINT_KINDS = {PointKind.RUN: "run", PointKind.PATH_STAGE: "λ path stage", PointKind.BUDGET: "budget run",
               PointKind.JOINT_TASK: "joint task"}

launcher = ui.launcher()
st.title("Frontier")
st.caption("Each point is a finished run. Lower λ adapts more layers; the front shows the best accuracy "
           "for each budget. Click a point to open its run.")

sweeps = launcher.sweeps()
source = st.radio("Runs", ["a sweep", "runs I choose"], horizontal=True, index=0 if sweeps else 1)
if source == "a sweep":
    if not sweeps:
        st.info("No sweep yet: launch one with several λ values on the Launch page.")
        st.stop()
    sweep = st.selectbox("Sweep", sweeps)
    points = launcher.frontier(sweep)
else:
    everything = launcher.frontier()
    if not everything:
        st.info("No finished runs yet.")
        st.stop()
    labels = {p["run_id"]: f"{run_label(p)} · {p['dataset']} · {p['run_id']}" for p in everything}
    chosen = st.multiselect("Runs", list(labels), default=list(labels)[:50], format_func=labels.get)
    points = [p for p in everything if p["run_id"] in chosen]
if not points:
    st.info("None of these runs has finished yet; points appear as runs finish.")
    st.stop()

datasets = sorted({p["dataset"] for p in points if p.get("dataset")})
if len(datasets) > 1:
    dataset = st.selectbox("Dataset (a frontier compares runs on one task)", datasets)
    points = [p for p in points if p.get("dataset") == dataset]
backbones = sorted({p["backbone"] for p in points if p.get("backbone")})
if len(backbones) > 1:
    st.warning(f"These runs use different backbones ({', '.join(backbones)}); their points are not comparable.")

c1, c2 = st.columns(2)
x = c1.radio("x axis", ["task_specific_layers_pct", "additional_params_pct"], horizontal=True,
             format_func=figures.AXIS_TITLES.get)
y = c2.radio("y axis", ["test_acc", "val_acc"], horizontal=True, format_func=figures.AXIS_TITLES.get)
event = st.plotly_chart(figures.frontier_figure(points, x=x, y=y, title=None), key="frontier_chart",
                        on_select="rerun", selection_mode="points")
picked = [pt.get("customdata") for pt in (event.selection.points if event else []) if pt.get("customdata")]
if picked:
    ui.open_run(picked[0] if isinstance(picked[0], str) else picked[0][0])

front = {(p["run_id"], p.get("stage")) for p in figures.pareto_front(points, x, y)}
table = [{"run": run_label(p) + (f" · stage {p['stage'] + 1}" if p.get("stage") is not None else ""),
          "method": p["method"], "point": POINT_KINDS[PointKind(p["kind"])], "λ": p["lam"],
          figures.AXIS_TITLES[x]: p[x], figures.AXIS_TITLES[y]: p[y],
          "on the front": (p["run_id"], p.get("stage")) in front, "id": p["run_id"]} for p in points]
st.dataframe(table, hide_index=True, width="stretch", placeholder=ui.MISSING,
             column_config={"λ": st.column_config.NumberColumn(format="%g"),
                            figures.AXIS_TITLES[x]: st.column_config.NumberColumn(format="%.1f"),
                            figures.AXIS_TITLES[y]: st.column_config.NumberColumn(format="%.3f")})
st.caption(compute_caption(points, sweep=source == "a sweep"))
o1, o2 = st.columns([3, 1])
target = o1.selectbox("Open a run", list(dict.fromkeys(p["run_id"] for p in points)), format_func=lambda i: next(
    f"{t['run']} ({i})" for t in table if t["id"] == i), label_visibility="collapsed")
if o2.button("Open run", icon=":material/open_in_new:"):
    ui.open_run(target)
