"""Runs: every run in the store; the selected one live — progress, loss, accuracy, the
active-layer heatmap, its log and its final layer report."""
from __future__ import annotations

import streamlit as st

from workbench import figures, ui
from workbench.live import FIGURE_REFRESH_S, FigureCache, LiveRun, poll_seconds
from workbench.launcher import STATUSES, TERMINAL
from workbench.summaries import (final_scores, layer_report_rows, plural, run_label, run_progress, run_rows,
                                 run_settings, task_scores)

ACTIVE = ("queued", "running")
TABLE_REFRESH_S = 10.0  # the table's progress column: a glance, not a live view
# The runs table's columns: (header, width in px, number format, header help). 870 px in all, so
# every column fits the 900 or so a 1400 px window leaves beside the sidebar; the run's id and
# sweep are in the panel below the table.
TABLE_COLUMNS = {
    "status": ("status", 65, None, None), "name": ("name", 115, None, None), "progress": ("progress", 75, None, None),
    "method": ("method", 85, None, None), "dataset": ("dataset", 95, None, None),
    "backbone": ("backbone", 105, None, None), "λ": ("λ", 45, "%g", None), "test acc": ("test acc", 60, "%.3f", None),
    "% task-specific layers": ("% layers", 60, "%.1f", "% task-specific layers"),
    "% additional params": ("% params", 60, "%.1f", "% additional parameters over the backbone"),
    "created": ("created", 105, None, None),
}
LOG_TAIL_BYTES = 6000
STATUS_COLORS = {"queued": "gray", "running": "blue", "done": "green", "failed": "red", "cancelled": "orange"}

launcher = ui.launcher()
st.title("Runs")
launched = st.session_state.pop("launched", None)
if launched:
    st.success(f"Launched {plural(launched, 'run')}. " + (
        "It trains in the background: this page follows it live, and closing the browser does not stop it."
        if launched == 1 else "They train in the background as slots free up: this page follows the run "
        "training now, and closing the browser stops none of them."))

runs = launcher.list_runs(limit=1000)  # reaps runs whose worker vanished
if any(r["status"] == "queued" for r in runs) and launcher.schedule():  # the queue moves even if a worker died
    runs = launcher.list_runs(limit=1000)
if not runs:
    st.info("No runs yet. Launch one on the Launch page.")
    st.page_link(ui.LAUNCH_PAGE, label="Launch a run", icon=":material/rocket_launch:")
    st.stop()

f1, f2 = st.columns([2, 1])
statuses = f1.multiselect("Status", STATUSES, default=[], placeholder="all statuses")
sweep = f2.selectbox("Sweep", ["all runs"] + launcher.sweeps())

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


def _table_column(key: str):
    header, width, number_format, help_text = TABLE_COLUMNS[key]
    if key == "progress":
        return st.column_config.ProgressColumn(header, min_value=0.0, max_value=1.0, format="percent", width=width)
    if number_format:
        return st.column_config.NumberColumn(header, format=number_format, width=width, help=help_text)
    return st.column_config.TextColumn(header, width=width, help=help_text)


def runs_table() -> None:
    """The table of runs; refreshed every TABLE_REFRESH_S while any run is queued or running."""
    runs = launcher.list_runs(limit=1000)
    if any(r["status"] in ACTIVE for r in runs) != st.session_state["table_active"]:
        st.rerun()  # the last active run ended (or one started): switch refreshing on or off
    shown = [r for r in runs if (not statuses or r["status"] in statuses)
             and (sweep == "all runs" or r["sweep"] == sweep)]
    rows = run_rows(shown)
    st.session_state["runs_table_ids"] = [r["id"] for r in rows]
    st.dataframe(
        rows, key="runs_table", on_select=_picked, selection_mode="single-row", hide_index=True,
        width="stretch", height=min(420, 38 + 35 * max(1, len(rows))), placeholder=ui.MISSING,
        column_order=list(TABLE_COLUMNS), column_config={key: _table_column(key) for key in TABLE_COLUMNS})
    if ui.selected_run() not in (None, st.session_state["panel_run"]):
        st.rerun()  # a row was picked: show that run below


st.fragment(runs_table, run_every=TABLE_REFRESH_S if st.session_state["table_active"] else None)()
st.divider()
run = launcher.get(selected)
st.session_state["panel_active"] = run["status"] in ACTIVE


def _log_tail(run_id: str) -> str:
    path = launcher.log_path(run_id)
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def live_run(run_id: str) -> LiveRun:
    """What this session has read of the run so far (read on from there at each poll)."""
    live = st.session_state.get("live_run")
    if live is None or live.run_id != run_id:
        live = st.session_state["live_run"] = LiveRun(launcher, run_id)
        st.session_state["live_figures"] = FigureCache(refresh_s=0)  # live_figures' own interval paces builds
    return live


def _ended_or_started(run: dict) -> None:
    if (run["status"] in ACTIVE) != st.session_state.get("panel_active"):
        st.rerun()  # started or ended: redraw the whole page (table, buttons, refresh on/off)


def live_status(run_id: str) -> None:
    """What a reader follows step by step (progress, metrics), read at the run's pace, without
    reaping: the table's refresh reaps runs whose worker died (every TABLE_REFRESH_S)."""
    run = launcher.get(run_id, reap=False)
    _ended_or_started(run)
    live = live_run(run_id)
    live.poll(run)
    if run["status"] == "running" and live_poll_changed(poll_seconds(live.step_seconds())):
        st.rerun()  # the run's pace moved: poll at the new pace (a fragment's interval is set by a full run)
    st.subheader(f"{run_label(run)} :{STATUS_COLORS.get(run['status'], 'gray')}-badge[{run['status']}]")
    st.caption(f"`{run['id']}` · {run.get('method')} on {run.get('dataset')} with {run.get('backbone')}"
               + (f" · sweep {run['sweep']}" if run.get("sweep") else "")
               + (f" · {run['device']}" if run.get("device") and run["status"] != "queued" else ""))
    progress = run_progress(run, live.recent_steps, live.epochs)
    st.progress(progress.fraction, text=progress.text)

    if run["status"] in ACTIVE and st.button("Cancel", icon=":material/stop:", key=f"cancel-{run_id}"):
        with st.spinner("Stopping after the current step…"):
            ui.attempt(lambda: launcher.cancel(run_id, grace_s=5.0), "Cancelling")
        st.rerun()
    if run["status"] in ("failed", "cancelled") and st.button("Resume", icon=":material/replay:",
                                                               key=f"resume-{run_id}"):
        ui.attempt(lambda: launcher.resume(run_id), "Resuming")
        st.rerun()
    if run.get("error"):
        st.error(run["error"])
    for epoch in live.epochs:
        if epoch.get("warning"):
            st.warning(f"Epoch {epoch['epoch'] + 1}: {epoch['warning']}")

    last_epoch = live.epochs[-1] if live.epochs else {}
    last_step = live.recent_steps[-1] if live.recent_steps else {}
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("epoch", f"{len(live.epochs)} / {run.get('epochs') or '?'}")
    m2.metric("val accuracy", f"{last_epoch['val_acc']:.3f}" if last_epoch.get("val_acc") is not None else "–")
    layers = len(run.get("layer_names") or [])
    m3.metric("active layers", f"{last_step.get('active_layers', '–')} / "
                               f"{layers * len(run.get('tasks') or [0]) or '?'}")
    m4.metric("images / s", f"{last_step['images_per_sec']:.0f}" if last_step.get("images_per_sec") else "–")


def live_figures(run_id: str) -> None:
    """The figures and the log, from what live_status read last. A fragment of their own, redrawn
    every FIGURE_REFRESH_S at most: sending the three figures again at every poll, unchanged or
    not, was a third of what a watched run cost the server (py-spy)."""
    run = launcher.get(run_id, reap=False)
    _ended_or_started(run)
    live = live_run(run_id)
    if run["status"] == "queued":
        st.info("Queued: it starts when the runs before it have finished.")
    elif not live.last_step:
        st.info("Waiting for the first training steps (loading data and weights)…")
    else:
        drawn = st.session_state["live_figures"]
        identity = (run_id, run["status"])  # a new status (the run ended) draws its final figures at once
        c1, c2 = st.columns(2)
        loss = drawn.get("loss", identity, live.version["steps"],
                         lambda: figures.loss_figure(live.curve_steps, tasks=run.get("tasks") or ()))
        c1.plotly_chart(loss, key=f"loss-{run_id}")
        if live.epochs:
            accuracy = drawn.get("accuracy", identity, live.version["epochs"],
                                 lambda: figures.accuracy_figure(live.epochs))
            c2.plotly_chart(accuracy, key=f"acc-{run_id}")
        else:
            c2.caption("Accuracy appears after the first epoch.")
        if live.heatmap_scores and run.get("layer_names"):
            mode = st.segmented_control(
                "Heatmap shows", ["score", "gate"], default="score", key="heatmap_mode",
                format_func={"score": "gate scores (white: at τ)", "gate": "on / off"}.get) or "score"
            heatmaps = drawn.get("heatmaps", identity + (mode,), live.version["scores"],
                                 lambda: heatmap_figures(run, live.heatmap_steps, live.heatmap_scores, mode))
            for k, heatmap in enumerate(heatmaps):
                st.plotly_chart(heatmap, key=f"heatmap-{run_id}-{k}")
    with st.expander("Log (last lines)", expanded=run["status"] == "failed"):
        st.code(_log_tail(run_id) or "(no output yet)", language="text")


def heatmap_figures(run: dict, steps: list[int], matrix: list[list[float]], mode: str) -> list:
    """One active-layer heatmap per task (one for any run but a joint one)."""
    per_task = list(zip(*(task_scores(run, row) for row in matrix)))  # per task: (task, scores) per step
    return [figures.heatmap_figure(
        steps, [b[1] for b in blocks], run["layer_names"], threshold=run_settings(run).taps.threshold,
        mode=mode, title="Active layers (layers × training steps)" + (f": {blocks[0][0]}" if blocks[0][0] else ""))
        for blocks in per_task]


def live_poll_changed(wanted_s: float) -> bool:
    """Whether the pace the panel polls at is off by more than half from ``wanted_s``."""
    current = st.session_state.get("live_poll_s")
    return current is None or not current / 1.5 <= wanted_s <= current * 1.5


if run["status"] in ACTIVE:  # read before the panel's first poll: its pace is known from the start
    live_run(run["id"]).poll(run)
    st.session_state["live_poll_s"] = poll_seconds(live_run(run["id"]).step_seconds())
following = run["status"] in ACTIVE
st.fragment(live_status, run_every=st.session_state["live_poll_s"] if following else None)(run["id"])
st.fragment(live_figures, run_every=max(st.session_state["live_poll_s"], FIGURE_REFRESH_S) if following else None)(
    run["id"])
if run["status"] in TERMINAL:
    report = layer_report_rows(run, final_scores(launcher, run["id"]))
    if report:
        with st.expander(f"Layer report: {sum(r['task-specific'] for r in report)} of {len(report)} "
                         "layers task-specific"):
            st.dataframe(report, hide_index=True, width="stretch", placeholder=ui.MISSING)
    if run.get("metrics"):
        with st.expander("Final metrics"):
            st.json(run["metrics"])
with st.expander("Configuration"):
    st.json(run["config"])
