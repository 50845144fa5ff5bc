"""The TAPS workbench dashboard: ``streamlit run app.py`` (or ``make app``).

A thin front over the library: each page calls ``workbench`` (launcher, run store, summaries,
figures); training happens in background worker processes, never in this one. Runs live in
$TAPS_RUNS_DIR (default ./runs), so pages, reloads and several browser tabs see the same runs.
"""
import streamlit as st

from workbench import ui

st.set_page_config(page_title="TAPS workbench", page_icon=":material/layers:", layout="wide")

navigation = st.navigation([
    st.Page(ui.LAUNCH_PAGE, title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page(ui.RUNS_PAGE, title="Runs", icon=":material/monitoring:"),
    st.Page(ui.FRONTIER_PAGE, title="Frontier", icon=":material/scatter_plot:"),
    st.Page(ui.PATTERNS_PAGE, title="Layer patterns", icon=":material/view_column:"),
    st.Page(ui.PACKS_PAGE, title="Task packs", icon=":material/inventory_2:"),
])
ui.sidebar()
navigation.run()
