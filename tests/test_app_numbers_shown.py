"""Issue 24, what a newcomer hit in the app: each number a page shows is the number the library
computes, and each page opens on what the user is looking for. Stores are written through the
store's own API (no training), so each test runs in seconds."""
from __future__ import annotations

import os

import pytest

import taps
from taps.training.trainer import TrainConfig
from app_testing import TINY, app
from helpers import scramble, tiny_resnet
from workbench.store import RunStore

PACKS, PATTERNS = "app_pages/task_packs.py", "app_pages/layer_patterns.py"


def _finished_run_with_pack(store: RunStore, off_every: int) -> tuple[str, taps.TaskStats]:
    """A done run whose pack keeps some layers and drops the rest (every ``off_every``-th off),
    with the trainer's metrics of that model; returns (run id, taps.summarize of the model)."""
    model = taps.adapt(tiny_resnet())
    scramble(model, off_every=off_every)
    stats = taps.summarize(model)
    run_id = store.create_run(TrainConfig.from_flat(**TINY, backbone="tv_resnet18").to_dict(), name=f"off every {off_every}")
    path = taps.save_pack(model, store.run_dir(run_id) / "task.safetensors")
    store.mark_running(run_id, os.getpid(), None, device="CPU (2 cores)")
    store.finish(run_id, "done", metrics={**stats.to_dict(), "test_acc": 0.5})
    store.add_artifact(run_id, "pack", path)
    return run_id, stats


def test_task_packs_page_counts_the_layers_the_pack_holds(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id, stats = _finished_run_with_pack(store, off_every=3)
    assert 0 < stats.active_layers < stats.gated_layers  # a pack that dropped some layers
    at = app(tmp_path, monkeypatch, PACKS)
    (row,) = at.dataframe[0].value.to_dict("records")
    assert row["layers"] == stats.active_layers
    shown = {m.label: m.value for m in at.metric}
    assert shown["task-specific layers"] == f"{stats.active_layers} of {stats.gated_layers}"
    pack = taps.read_pack(store.artifacts(run_id, kind="pack")[0]["path"])
    assert len(pack.active_layers) == stats.active_layers  # the deltas the pack holds


def _column_of(at, label: str):
    """The innermost column holding the number box labelled ``label``."""
    return next(c for c in reversed(list(at.columns)) if any(n.label == label for n in c.number_input))


@pytest.mark.parametrize("label, value, message", [
    ("Resolution (px)", 1, "resolution must be ≥ 16, got 1"),
    ("Batch size", 0, "batch_size must be ≥ 1, got 0"),
    ("Epochs", 100_000, "epochs must be ≤ 10000, got 100000"),
])
def test_out_of_range_number_is_refused_next_to_its_field(tmp_path, monkeypatch, label, value, message):
    at = app(tmp_path, monkeypatch)
    next(n for n in at.number_input if n.label == label).set_value(value).run()
    assert next(n for n in at.number_input if n.label == label).value == value  # kept as typed, not clamped
    assert [e.value for e in _column_of(at, label).error] == [message]
    at.button[0].click().run()
    assert at.title[0].value == "Launch a run"
    assert f"Nothing was launched. Fix first: {message}." in [e.value for e in at.error]
    assert RunStore(tmp_path).list_runs() == []


def test_after_a_launch_the_runs_page_follows_the_run_that_trains(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    busy = store.create_run(dict(TINY), name="already training")
    store.mark_running(busy, os.getpid(), None, device="CPU (2 cores)")  # holds the one CPU slot
    at = app(tmp_path, monkeypatch)
    next(t for t in at.text_input if t.label == "λ (sparsity)").set_value("0.1, 1").run()
    at.checkbox[0].uncheck().run()  # no baselines: two runs
    at.button[0].click().run()
    assert at.title[0].value == "Runs"
    assert at.success[0].value.startswith("Launched 2 runs. They train in the background as slots free up")
    launched = [r for r in store.list_runs() if r["id"] != busy]
    assert [r["status"] for r in launched] == ["queued", "queued"]
    assert at.subheader[0].value == "already training :blue-badge[running]"
    assert at.caption[0].value.startswith(f"`{busy}`")


LAYERS = [f"blocks.{i}.conv" for i in range(6)]


def _recorded_run(store: RunStore, name: str, final: list[float], *, finished: bool, sweep: str | None = None) -> str:
    """A run with one recorded step whose gate scores are ``final``; done when ``finished``."""
    run_id = store.create_run(dict(TINY, dataset="hanzi", threshold=0.1), name=name, sweep=sweep)
    store.mark_running(run_id, os.getpid(), None, device="CPU (2 cores)")
    store.record_start(run_id, {"layer_names": LAYERS, "layer_kinds": ["conv"] * len(LAYERS),
                                "layer_params": [100] * len(LAYERS), "classes": ["a", "b"], "total_steps": 100,
                                "train_size": 200, "val_size": 20, "test_size": 100, "config": {}, "start_epoch": 0})
    store.record_steps(run_id, [{"step": 10, "epoch": 0, "loss": 1.0, "task_loss": 1.0, "penalty": 0.0,
                                 "lam_now": 0.0, "lr": 0.003, "active_layers": sum(s >= 0.1 for s in final),
                                 "images_per_sec": 100.0, "t": 1.7e9, "scores": final, "total_steps": 100}])
    if finished:
        store.finish(run_id, "done", metrics={"test_acc": 0.5})
    return run_id


def test_layer_patterns_show_finished_runs_only_and_select_a_lone_run(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    for lam, final in ((0.1, [0.3] * 6), (1.0, [0.3, 0.3, 0.02, 0.02, 0.02, 0.3])):
        _recorded_run(store, f"taps λ={lam:g}", final, finished=True, sweep="older sweep")
    lone = _recorded_run(store, "lone", [0.3, 0.02, 0.02, 0.02, 0.02, 0.3], finished=True)
    _recorded_run(store, "still training", [0.15] * 6, finished=False)  # step 10 of 100: every layer still on
    at = app(tmp_path, monkeypatch, PATTERNS)
    assert [o.split(" · ")[0] for o in at.multiselect[0].options] == ["lone", "taps λ=1", "taps λ=0.1"]
    assert at.multiselect[0].value == [lone]
    assert at.caption[1].value == "Left out until they finish: 1 run still queued or training."
    shown = {m.label: m.value for m in at.metric}
    assert shown == {"layers task-specific in every chosen run": "2", "layers shared by every chosen run": "4"}


def test_a_starting_run_shows_no_device_until_its_worker_names_one(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id = store.create_run(TrainConfig.from_flat(**TINY).to_dict())  # device "auto": the worker decides
    store.mark_running(run_id, os.getpid(), None)  # started, device not known yet
    at = app(tmp_path, monkeypatch, "app_pages/runs.py")
    assert at.caption[0].value == f"`{run_id}` · taps on hanzi with efficientnet_lite0"
    store.record_start(run_id, {"device": "CPU (2 cores)", "layer_names": LAYERS, "total_steps": 10,
                                "train_size": 200, "config": {}, "start_epoch": 0})
    at.run()
    assert at.caption[0].value == f"`{run_id}` · taps on hanzi with efficientnet_lite0 · CPU (2 cores)"


def test_frontier_of_hand_picked_runs_does_not_call_them_a_sweep(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    _finished_run_with_pack(store, off_every=2)
    at = app(tmp_path, monkeypatch, "app_pages/frontier.py")
    assert at.radio[0].value == "runs I choose"  # no sweep in this store
    compute = next(c.value for c in at.caption if c.value.startswith("Compute — "))
    assert compute.startswith("Compute — TAPS runs: 1 point from 1 run, ")
