"""The live view of a running run costs little: it reads only what was recorded since its last
poll, builds a figure again only when its data moved (and then at most every few seconds),
and polls at about the run's own pace. Unit tests of workbench.live, then the Runs page with
AppTest on a run that a test writes step by step, as a worker would."""
from __future__ import annotations

import os

import numpy as np
import psutil
import pytest

from app_testing import app, assert_clean, charts, trace
from workbench import figures
from workbench.live import (FIGURE_REFRESH_S, POLL_BEFORE_STEPS_S, POLL_MAX_S, POLL_MIN_S, FigureCache, LiveRun,
                            poll_seconds)
from workbench.store import RunStore

RUNS = "app_pages/runs.py"
LAYERS = [f"blocks.{i}.conv" for i in range(6)]


def running_run(store: RunStore, total_steps: int) -> str:
    """A run this test process 'trains': alive to the launcher's reaper, with a known plan."""
    run_id = store.create_run({"method": "taps", "lam": 0.3, "epochs": 2, "threshold": 0.1}, name="live")
    me = psutil.Process(os.getpid())
    store.mark_running(run_id, me.pid, me.create_time(), device="CPU (2 cores)")
    store.record_start(run_id, {"layer_names": LAYERS, "layer_kinds": ["conv"] * len(LAYERS),
                                "layer_params": [100] * len(LAYERS), "classes": ["a", "b"],
                                "total_steps": total_steps, "train_size": 64, "val_size": 8, "test_size": 8,
                                "start_epoch": 0})
    return run_id


def write_steps(store: RunStore, run_id: str, first: int, last: int, *, seconds_per_step: float = 0.5,
                steps_per_epoch: int = 10**6) -> None:
    store.record_steps(run_id, [
        {"step": s, "epoch": (s - 1) // steps_per_epoch, "loss": 1.0 / s, "task_loss": 0.9 / s, "penalty": 0.1,
         "lam_now": 0.3, "lr": 0.003, "active_layers": 4, "images_per_sec": 50.0, "t": 1000.0 + s * seconds_per_step,
         "scores": [0.15 + 0.001 * s * (k - 3) for k in range(len(LAYERS))]}
        for s in range(first, last + 1)])


# ----------------------------------------------------------------------------- LiveRun

def test_each_poll_reads_only_what_was_recorded_since_the_last(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id = running_run(store, total_steps=40)
    asked = []
    real = store.steps_since
    monkeypatch.setattr(store, "steps_since", lambda rid, after=0, *a, **k: asked.append(after) or real(rid, after, *a, **k))
    live = LiveRun(store, run_id)
    write_steps(store, run_id, 1, 7)
    assert live.poll(store.get_run(run_id)) is True
    write_steps(store, run_id, 8, 12)
    assert live.poll(store.get_run(run_id)) is True
    versions = dict(live.version)
    assert live.poll(store.get_run(run_id)) is False  # nothing new: nothing changed
    assert live.version == versions
    assert asked == [0, 7, 12]  # never from the first step again
    # What was read in pieces is what one full read gives.
    assert live.curve_steps == store.steps_since(run_id)
    steps, matrix = store.scores_matrix(run_id)
    assert live.heatmap_steps == steps and live.heatmap_scores == matrix


def test_a_long_run_is_thinned_to_the_same_window_a_full_read_gives(tmp_path):
    store = RunStore(tmp_path)
    run_id = running_run(store, total_steps=1000)
    live = LiveRun(store, run_id, curve_points=100, heatmap_columns=30)
    for first in range(1, 988, 13):  # the worker flushes a few steps at a time
        write_steps(store, run_id, first, min(987, first + 12))
        live.poll(store.get_run(run_id))
    every_curve, every_column = 10, 34  # ⌈1000 / 100⌉, ⌈1000 / 30⌉
    everything = store.steps_since(run_id)
    assert [s["step"] for s in live.curve_steps] == [s["step"] for s in everything if s["step"] % every_curve == 0] + [987]
    steps, matrix = store.scores_matrix(run_id, every=every_column)
    last_step, last = store.scores_matrix(run_id, limit=1)
    assert live.heatmap_steps == steps + last_step and live.heatmap_scores == matrix + last
    assert len(live.curve_steps) <= 101 and len(live.heatmap_steps) <= 31  # bounded, however long the run


def test_a_resumed_run_is_read_again_from_its_restart(tmp_path):
    store = RunStore(tmp_path)
    run_id = running_run(store, total_steps=20)
    live = LiveRun(store, run_id)
    write_steps(store, run_id, 1, 10, steps_per_epoch=10)
    store.record_epoch(run_id, {"epoch": 0, "epochs": 2, "val_acc": 0.5, "test_acc": 0.5, "seconds": 5.0})
    write_steps(store, run_id, 11, 14, steps_per_epoch=10)
    live.poll(store.get_run(run_id))
    assert len(live.epochs) == 1 and live.last_step == 14
    # Cancelled and resumed from its checkpoint after epoch 0: the store drops steps 11-14 and
    # the worker writes them again, differently, and more, before the page polls again.
    store.finish(run_id, "cancelled")
    store.set_status(run_id, "queued")
    store.mark_running(run_id, os.getpid(), psutil.Process().create_time())
    store.record_start(run_id, {"layer_names": LAYERS, "total_steps": 20, "start_epoch": 1, "train_size": 64})
    store.record_steps(run_id, [{"step": s, "epoch": 1, "loss": 7.0, "t": 2000.0 + s, "scores": [0.2] * len(LAYERS)}
                                for s in range(11, 17)])
    live.poll(store.get_run(run_id))
    assert live.curve_steps == store.steps_since(run_id)
    assert [s["loss"] for s in live.curve_steps[10:]] == [7.0] * 6
    assert live.heatmap_scores == store.scores_matrix(run_id)[1]


def test_step_seconds_is_the_median_gap_within_an_epoch(tmp_path):
    store = RunStore(tmp_path)
    run_id = running_run(store, total_steps=20)
    live = LiveRun(store, run_id)
    live.poll(store.get_run(run_id))
    assert live.step_seconds() is None
    # 0.5 s, 0.5 s, then a 29 s evaluation between epochs (left out), then 0.7 s.
    store.record_steps(run_id, [{"step": s, "epoch": e, "t": t} for s, e, t in
                                [(1, 0, 10.0), (2, 0, 10.5), (3, 0, 11.0), (4, 1, 40.0), (5, 1, 40.7)]])
    live.poll(store.get_run(run_id))
    assert live.step_seconds() == pytest.approx(0.5)


@pytest.mark.parametrize("step_s, poll", [(None, POLL_BEFORE_STEPS_S), (0.2, POLL_MIN_S), (3.0, 3.0),
                                          (45.0, POLL_MAX_S)])
def test_polls_follow_the_runs_pace_within_bounds(step_s, poll):
    assert poll_seconds(step_s) == poll


def test_a_figure_is_built_again_only_when_its_data_moved_and_not_too_often():
    now = [0.0]
    cache = FigureCache(refresh_s=5.0, clock=lambda: now[0])
    built = []

    def build():
        built.append(now[0])
        return f"figure {len(built)}"

    assert cache.get("loss", ("r1", "running"), 1, build) == "figure 1"
    now[0] = 30.0
    assert cache.get("loss", ("r1", "running"), 1, build) == "figure 1"  # same data, however late: not rebuilt
    assert cache.get("loss", ("r1", "running"), 2, build) == "figure 2"  # new data, 30 s on
    now[0] = 32.0
    assert cache.get("loss", ("r1", "running"), 3, build) == "figure 2"  # new data 2 s later: wait
    now[0] = 35.5
    assert cache.get("loss", ("r1", "running"), 3, build) == "figure 3"
    now[0] = 36.0
    assert cache.get("loss", ("r1", "done"), 4, build) == "figure 4"  # the run ended: its final figure at once
    assert built == [0.0, 30.0, 35.5, 36.0] and cache.builds == 4


# ----------------------------------------------------------------------------- the Runs page

def test_runs_page_reads_on_from_its_last_poll_and_builds_no_unchanged_figure(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id = running_run(store, total_steps=40)
    write_steps(store, run_id, 1, 6, seconds_per_step=3.0)
    builds = {"loss": 0, "heatmap": 0}
    for name, real in (("loss", figures.loss_figure), ("heatmap", figures.heatmap_figure)):
        def counted(*args, _name=name, _real=real, **kwargs):
            builds[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(figures, f"{name}_figure", counted)
    asked = []
    real_steps_since = RunStore.steps_since
    monkeypatch.setattr(RunStore, "steps_since", lambda self, rid, after=0, *a, **k: (
        asked.append(after), real_steps_since(self, rid, after, *a, **k))[1])

    at = app(tmp_path, monkeypatch, RUNS, query={"run": run_id})
    assert at.subheader[0].value.endswith(":blue-badge[running]")
    assert at.session_state["live_poll_s"] == 3.0  # a step every 3 s: a poll every 3 s
    first = builds.copy()
    assert first == {"loss": 1, "heatmap": 1}
    asked.clear()
    at.run()  # a poll with nothing new: the same figures, not built again
    assert_clean(at)
    assert builds == first and asked == [6, 6]  # the page's read, then its panel's: both from step 6 on
    loss = trace(charts(at)[0], "task loss")
    assert list(loss["x"]) == list(range(1, 7))

    write_steps(store, run_id, 7, 9, seconds_per_step=3.0)
    asked.clear()
    at.run()
    assert_clean(at)
    assert asked == [6, 9]  # read on from the last step it had
    assert "step 9 / 40" in at.get("progress")[0].proto.text


def test_runs_page_polls_a_fast_run_often_and_a_slow_one_seldom(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    fast = running_run(store, total_steps=100)
    write_steps(store, fast, 1, 20, seconds_per_step=0.2)
    at = app(tmp_path, monkeypatch, RUNS, query={"run": fast})
    assert at.session_state["live_poll_s"] == POLL_MIN_S
    store.finish(fast, "done")
    slow = running_run(store, total_steps=100)
    write_steps(store, slow, 1, 5, seconds_per_step=40.0)
    at = app(tmp_path, monkeypatch, RUNS, query={"run": slow})
    assert at.session_state["live_poll_s"] == POLL_MAX_S


def test_figures_are_sent_every_few_seconds_while_the_progress_follows_every_poll(tmp_path, monkeypatch):
    """The figures are a fragment of their own: sending all three again at every poll, changed or
    not, was a third of the server's CPU while a fast run was watched (benchmarks/live_view_cpu.py)."""
    import streamlit as st

    paces: dict = {}
    real_fragment = st.fragment

    def recorded(func, *, run_every=None):
        paces[func.__name__] = run_every
        return real_fragment(func, run_every=run_every)

    monkeypatch.setattr(st, "fragment", recorded)
    store = RunStore(tmp_path)
    fast = running_run(store, total_steps=100)
    write_steps(store, fast, 1, 20, seconds_per_step=0.2)
    at = app(tmp_path, monkeypatch, RUNS, query={"run": fast})
    assert (paces["live_status"], paces["live_figures"]) == (POLL_MIN_S, FIGURE_REFRESH_S)
    assert "step 20 / 100" in at.get("progress")[0].proto.text
    assert list(trace(charts(at)[0], "task loss")["x"]) == list(range(1, 21))  # the figures are still drawn
    store.finish(fast, "done")
    slow = running_run(store, total_steps=100)
    write_steps(store, slow, 1, 5, seconds_per_step=40.0)
    app(tmp_path, monkeypatch, RUNS, query={"run": slow})
    assert paces["live_status"] == paces["live_figures"] == POLL_MAX_S  # never more often than the polls
    store.finish(slow, "done")
    app(tmp_path, monkeypatch, RUNS, query={"run": slow})
    assert paces == {"runs_table": None, "live_status": None, "live_figures": None}  # nothing left to follow


def test_tables_show_a_dash_for_missing_values_and_keep_numbers_sortable(tmp_path, monkeypatch):
    from benchmarks.synthetic_store import populate

    populate(RunStore(tmp_path), 5, 10)  # a sweep of TAPS runs and fine-tuning, which has no λ
    at = app(tmp_path, monkeypatch, RUNS)
    table = at.dataframe[0]
    assert table.proto.placeholder == "–"
    lams = table.value.set_index("name")["λ"]
    assert lams.dtype == np.float64 and np.isnan(lams["finetune"]) and lams.notna().sum() == 4
    at.switch_page("app_pages/frontier.py").run()
    assert_clean(at)
    assert at.dataframe[0].proto.placeholder == "–"
    assert at.dataframe[0].value["λ"].dtype == np.float64
