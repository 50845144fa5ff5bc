"""Helpers for driving the Streamlit app in tests: AppTest on a runs folder, figure data."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from speed import patience

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
# Workers train at 32 px on 200 images: a few seconds a run on 2 CPU cores.
TINY = dict(resolution=32, train_subset=200, eval_subset=100, batch_size=32, epochs=1)


def app(runs_dir, monkeypatch, page: str | None = None, query: dict | None = None) -> AppTest:
    """The app on ``runs_dir`` (via TAPS_RUNS_DIR), run once, on ``page`` if given."""
    monkeypatch.setenv("TAPS_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=patience(180))
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def charts(at: AppTest) -> list[dict]:
    """The Plotly figures on the page, as dicts (numpy arrays decoded)."""
    return [_decode(json.loads(c.proto.spec)) for c in at.get("plotly_chart")]


def _decode(value):
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:  # plotly's binary array encoding
            arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
            shape = value.get("shape")
            if shape:
                arr = arr.reshape([int(s) for s in str(shape).split(",")])
            return arr
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def trace(figure: dict, name=None, type_=None) -> dict:
    found = [t for t in figure["data"] if (name is None or t.get("name") == name)
             and (type_ is None or t.get("type") == type_)]
    assert found, f"no trace named {name!r} of type {type_!r} in {[t.get('name') for t in figure['data']]}"
    return found[0]


def run_until(at: AppTest, done, timeout: float, poll: float = 1.0) -> AppTest:
    """Rerun the page (as its live fragment would) until ``done(at)`` or fail after ``timeout``
    seconds on the reference machine (longer on a slower one)."""
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        assert_clean(at)
        if done(at):
            return at
        time.sleep(poll)
    raise AssertionError(f"page did not reach the expected state in {timeout:.0f} s: "
                         f"{[s.value for s in at.subheader]} {[e.value for e in at.error]}")
