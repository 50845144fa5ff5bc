"""Runs: every run in the store; the selected one live — progress, loss, accuracy, the
active-layer heatmap, its log and its final layer report."""
from __future__ import annotations

import streamlit as st

from workbench import figures, ui
from workbench.launcher import LOG_NAME
from workbench.store import STATUSES, TERMINAL
from workbench.summaries import (final_scores, layer_report_rows, plural, run_label, run_progress, run_rows,
                                 task_scores)

ACTIVE = ("queued", "running")
REFRESH_S = 1.5
HEATMAP_COLUMNS = 300  # steps drawn in the heatmap, however long the run
CURVE_POINTS = 600
LOG_TAIL_BYTES = 6000
STATUS_COLORS = {"queued": "gray", "running": "blue", "done": "green", "failed": "red", "cancelled": "orange"}

launcher = ui.launcher()
store = launcher.store
st.title("Runs")
launched = st.session_state.pop("launched", None)
if launched:
    st.success(f"Launched {plural(launched, 'run')}. " + (
        "It trains in the background: this page follows it live, and closing the browser does not stop it."
        if launched == 1 else "They train in the background as slots free up: this page follows the run "
        "training now, and closing the browser stops none of them."))

runs = launcher.list_runs(limit=1000)  # reaps runs whose worker vanished
if any(r["status"] == "queued" for r in runs) and launcher.schedule():  # the queue moves even if a worker died
    runs = store.list_runs(limit=1000)
if not runs:
    st.info("No runs yet. Launch one on the Launch page.")
    st.page_link(ui.LAUNCH_PAGE, label="Launch a run", icon=":material/rocket_launch:")
    st.stop()

f1, f2 = st.columns([2, 1])
statuses = f1.multiselect("Status", STATUSES, default=[], placeholder="all statuses")
sweep = f2.selectbox("Sweep", ["all runs"] + store.sweeps())

selected = ui.selected_run()
if selected not in {r["id"] for r in runs}:
    running = [r for r in runs if r["status"] in ACTIVE]
    selected = (running or runs)[0]["id"]
st.session_state["panel_run"] = selected
st.session_state["table_active"] = any(r["status"] in ACTIVE for r in runs)


def _picked() -> None:
    picked = st.session_state["runs_table"].selection.rows
    if picked:
        ui.select_run(st.session_state["runs_table_ids"][picked[0]])


def runs_table() -> None:
    """The table of runs; refreshed with the live panel while any run is queued or running."""
    runs = launcher.list_runs(limit=1000)
    if any(r["status"] in ACTIVE for r in runs) != st.session_state["table_active"]:
        st.rerun()  # the last active run ended (or one started): switch refreshing on or off
    shown = [r for r in runs if (not statuses or r["status"] in statuses)
             and (sweep == "all runs" or r["sweep"] == sweep)]
    rows = run_rows(shown)
    st.session_state["runs_table_ids"] = [r["id"] for r in rows]
    st.dataframe(
        rows, key="runs_table", on_select=_picked, selection_mode="single-row", hide_index=True,
        width="stretch", height=min(420, 38 + 35 * max(1, len(rows))),
        column_order=["status", "name", "progress", "method", "dataset", "backbone", "λ", "test acc",
                      "% task-specific layers", "% additional params", "sweep", "created", "id"],
        column_config={
            "status": st.column_config.TextColumn("status", width="small"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "λ": st.column_config.NumberColumn("λ", format="%g"),
            "test acc": st.column_config.NumberColumn("test acc", format="%.3f"),
            "% task-specific layers": st.column_config.NumberColumn("% task-specific layers", format="%.1f"),
            "% additional params": st.column_config.NumberColumn("% additional params", format="%.1f"),
        })
    if ui.selected_run() not in (None, st.session_state["panel_run"]):
        st.rerun()  # a row was picked: show that run below


st.fragment(runs_table, run_every=REFRESH_S if st.session_state["table_active"] else None)()
st.divider()
run = store.get_run(selected)
st.session_state["panel_active"] = run["status"] in ACTIVE


def _log_tail(run_id: str) -> str:
    path = store.run_dir(run_id) / LOG_NAME
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _heatmap_data(run: dict) -> tuple[list[int], list[list[float]]]:
    every = max(1, -(-(run.get("total_steps") or run.get("last_step") or 1) // HEATMAP_COLUMNS))
    steps, matrix = store.scores_matrix(run["id"], every=every)
    last_step, last = store.scores_matrix(run["id"], limit=1)
    if last_step and (not steps or steps[-1] != last_step[0]):
        steps, matrix = steps + last_step, matrix + last
    return steps, matrix


def live_panel(run_id: str) -> None:
    run = launcher.get(run_id)
    if (run["status"] in ACTIVE) != st.session_state.get("panel_active"):
        st.rerun()  # started or ended: redraw the whole page (table, buttons, refresh on/off)
    st.subheader(f"{run_label(run)} :{STATUS_COLORS.get(run['status'], 'gray')}-badge[{run['status']}]")
    st.caption(f"`{run['id']}` · {run.get('method')} on {run.get('dataset')} with {run.get('backbone')}"
               + (f" · sweep {run['sweep']}" if run.get("sweep") else "")
               + (f" · {run['device']}" if run.get("device") and run["status"] != "queued" else ""))
    steps = store.steps_since(run_id, 0)
    epochs = store.epochs(run_id)
    progress = run_progress(run, steps[-50:], epochs)
    st.progress(progress.fraction, text=progress.text)

    b1, b2, _ = st.columns([1, 1, 6])
    if run["status"] in ACTIVE and b1.button("Cancel", icon=":material/stop:", key=f"cancel-{run_id}"):
        with st.spinner("Stopping after the current step…"):
            ui.attempt(lambda: launcher.cancel(run_id, grace_s=5.0), "Cancelling")
        st.rerun()
    if run["status"] in ("failed", "cancelled") and b2.button("Resume", icon=":material/replay:",
                                                               key=f"resume-{run_id}"):
        ui.attempt(lambda: launcher.resume(run_id), "Resuming")
        st.rerun()
    if run.get("error"):
        st.error(run["error"])
    for epoch in epochs:
        if epoch.get("warning"):
            st.warning(f"Epoch {epoch['epoch'] + 1}: {epoch['warning']}")

    last_epoch = epochs[-1] if epochs else {}
    last_step = steps[-1] if steps else {}
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("epoch", f"{len(epochs)} / {run.get('epochs') or '?'}")
    m2.metric("val accuracy", f"{last_epoch['val_acc']:.3f}" if last_epoch.get("val_acc") is not None else "–")
    layers = len(run.get("layer_names") or [])
    m3.metric("active layers", f"{last_step.get('active_layers', '–')} / "
                               f"{layers * len(run.get('tasks') or [0]) or '?'}")
    m4.metric("images / s", f"{last_step['images_per_sec']:.0f}" if last_step.get("images_per_sec") else "–")

    if run["status"] == "queued":
        st.info("Queued: it starts when the runs before it have finished.")
    elif not steps:
        st.info("Waiting for the first training steps (loading data and weights)…")
    else:
        c1, c2 = st.columns(2)
        c1.plotly_chart(figures.loss_figure(figures.downsample(steps, CURVE_POINTS), tasks=run.get("tasks") or ()),
                        key=f"loss-{run_id}")
        if epochs:
            c2.plotly_chart(figures.accuracy_figure(epochs), key=f"acc-{run_id}")
        else:
            c2.caption("Accuracy appears after the first epoch.")
        hm_steps, matrix = _heatmap_data(run)
        if matrix and run.get("layer_names"):
            heatmap_mode = st.segmented_control(
                "Heatmap shows", ["score", "gate"], default="score", key="heatmap_mode",
                format_func={"score": "gate scores (white: at τ)", "gate": "on / off"}.get)
            per_task = list(zip(*(task_scores(run, row) for row in matrix)))  # per task: (task, scores) per step
            for k, blocks in enumerate(per_task):
                task = blocks[0][0]
                st.plotly_chart(figures.heatmap_figure(
                    hm_steps, [b[1] for b in blocks], run["layer_names"],
                    threshold=float(run["config"].get("threshold", 0.1)), mode=heatmap_mode or "score",
                    title="Active layers (layers × training steps)" + (f": {task}" if task else "")),
                    key=f"heatmap-{run_id}-{k}")
    if run["status"] in TERMINAL:
        report = layer_report_rows(run, final_scores(store, run_id))
        if report:
            with st.expander(f"Layer report: {sum(r['task-specific'] for r in report)} of {len(report)} "
                             "layers task-specific"):
                st.dataframe(report, hide_index=True, width="stretch")
        if run.get("metrics"):
            with st.expander("Final metrics"):
                st.json(run["metrics"])
    with st.expander("Log (last lines)", expanded=run["status"] == "failed"):
        st.code(_log_tail(run_id) or "(no output yet)", language="text")
    with st.expander("Configuration"):
        st.json(run["config"])


st.fragment(live_panel, run_every=REFRESH_S if run["status"] in ACTIVE else None)(run["id"])
