"""What every page of the Streamlit app shares: the launcher on the configured runs folder, the
selected run, the page registry and error display. Only the app imports this module."""
from __future__ import annotations

from typing import Callable, TypeVar

import streamlit as st

from taps.errors import TAPSError

from .hardware import device_summary
from .launcher import Launcher
from .store import RunStore, StoreError, default_root

T = TypeVar("T")

# Page scripts, relative to app.py; st.switch_page takes these paths.
LAUNCH_PAGE = "app_pages/launch.py"
RUNS_PAGE = "app_pages/runs.py"
FRONTIER_PAGE = "app_pages/frontier.py"
PATTERNS_PAGE = "app_pages/layer_patterns.py"
PACKS_PAGE = "app_pages/task_packs.py"

MISSING = "–"  # what a table cell shows for a value a run does not have (a baseline's λ): not "None"
RUN_KEY = "run"  # the selected run: in session state, and in the URL so a reload keeps it


@st.cache_resource(show_spinner=False)
def _launcher(root: str) -> Launcher:
    return Launcher(RunStore(root))


def launcher() -> Launcher:
    """The launcher of the runs folder ($TAPS_RUNS_DIR, else ./runs), one per server process.
    A folder that cannot be used stops the page with the store's own message."""
    try:
        return _launcher(str(default_root().absolute()))
    except StoreError as exc:
        st.error(f"The run store cannot be opened: {exc}")
        st.stop()


@st.cache_data(ttl=30, show_spinner=False)
def device() -> str:
    return device_summary()


def selected_run() -> str | None:
    run_id = st.session_state.get(RUN_KEY) or st.query_params.get(RUN_KEY)
    return run_id or None


def select_run(run_id: str | None) -> None:
    st.session_state[RUN_KEY] = run_id
    if run_id:
        st.query_params[RUN_KEY] = run_id
    else:
        st.query_params.pop(RUN_KEY, None)


def open_run(run_id: str) -> None:
    """Select a run and show it on the Runs page."""
    select_run(run_id)
    st.switch_page(RUNS_PAGE, query_params={RUN_KEY: run_id})


def attempt(action: Callable[[], T], doing: str) -> T | None:
    """Run ``action``; a TAPS error (bad input, a store problem) becomes a red message naming
    what failed, instead of a traceback. Returns None after an error."""
    try:
        return action()
    except (TAPSError, ValueError, OSError) as exc:
        st.error(f"{doing} failed: {exc}")
        return None


def sidebar() -> None:
    launcher_ = launcher()
    with st.sidebar:
        st.caption(f"Runs train on **{device()}**")
        st.caption(f"Runs folder: `{launcher_.root}`")
