"""TAPS workbench dashboard (placeholder until the app lands: see the project's issue on the app)."""
import streamlit as st

st.set_page_config(page_title="TAPS workbench", layout="wide")
st.title("TAPS workbench")
st.write(
    "Task Adaptive Parameter Sharing: adapt one pretrained backbone to many tasks, "
    "learning which layers each task needs."
)
st.info(
    "Coming next: launch runs in background processes, watch the loss and the active-layer "
    "heatmap live, and explore the accuracy vs task-specific-layers frontier across λ. "
    "The library (`taps/`) is usable today: see the README."
)
