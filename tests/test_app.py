"""The Streamlit app, page by page, with AppTest: the real page scripts against a real run store,
launching real worker processes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app_testing import TINY, app, assert_clean, charts, run_until, trace
from workbench import figures, worker
from workbench.launcher import Launcher
from workbench.store import RunStore
from workbench.summaries import final_scores

RUNS, FRONTIER, PATTERNS, PACKS = ("app_pages/runs.py", "app_pages/frontier.py", "app_pages/layer_patterns.py",
                                   "app_pages/task_packs.py")


def _number(at, label):
    return next(n for n in at.number_input if n.label == label)


def _text(at, label):
    return next(t for t in at.text_input if t.label == label)


def _lam(at):
    return _text(at, "λ (sparsity)")


def _tiny_form(at) -> None:
    """The Launch form's sizes set to a run of a few seconds."""
    for label, key in (("Epochs", "epochs"), ("Resolution (px)", "resolution"),
                       ("Training images (0: all)", "train_subset"), ("Evaluation images (0: all)", "eval_subset")):
        _number(at, label).set_value(TINY[key])
    at.run()


def _finished(at) -> bool:
    return bool(at.subheader) and at.subheader[0].value.endswith("-badge[done]")


# ----------------------------------------------------------------------------- Launch

def test_launch_page_opens_on_the_offline_default(tmp_path, monkeypatch):
    at = app(tmp_path, monkeypatch)
    assert at.title[0].value == "Launch a run"
    backbone, dataset, method = at.selectbox
    assert (backbone.value, dataset.value, method.value) == ("efficientnet_lite0", "hanzi", "taps")
    lite0 = next(o for o in backbone.options if o.startswith("efficientnet_lite0 "))
    assert "weights offline ✓" in lite0
    assert "on this machine ✓" in next(o for o in dataset.options if o.startswith("Handwritten-style hanzi"))
    assert "on this machine ✓" in next(o for o in dataset.options if o.startswith("Fashion-MNIST"))  # one click away
    assert _lam(at).value == "0.3"
    info = at.info[0].value
    assert "CPU (" in info and "per run** (186 steps), from a training step timed on this machine" in info
    assert [b.label for b in at.button] == ["Launch run"]
    assert any("Runs folder" in c.value and str(tmp_path) in c.value for c in at.sidebar.caption)


def test_several_lams_launch_one_sweep_with_optional_baselines(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "5")  # the first run must not get far: it is cancelled
    at = app(tmp_path, monkeypatch)
    _lam(at).set_value("0.1, 1 3").run()
    assert at.button[0].label == "Launch sweep (5 runs)"
    at.checkbox[0].uncheck().run()
    assert at.button[0].label == "Launch sweep (3 runs)"
    _lam(at).set_value("0.1; 1").run()
    at.checkbox[0].check().run()
    at.button[0].click().run()
    assert_clean(at)
    assert at.title[0].value == "Runs" and "Launched 4 runs" in at.success[0].value
    launcher = Launcher(RunStore(tmp_path))
    runs = launcher.list_runs()
    try:
        assert len({r["sweep"] for r in runs}) == 1
        assert sorted((r["method"], r["lam"] if r["method"] == "taps" else None) for r in runs) == [
            ("feature_extractor", None), ("finetune", None), ("taps", 0.1), ("taps", 1.0)]
        assert sum(r["status"] == "running" for r in runs) == 1  # one at a time on a CPU machine
    finally:
        for r in runs:
            launcher.cancel(r["id"], grace_s=2)


def test_memory_saving_option_reaches_the_run_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "5")  # cancelled below, long before it ends
    at = app(tmp_path, monkeypatch)
    (box,) = [c for c in at.checkbox if c.label.startswith("Save memory")]
    assert box.value is False
    box.check().run()
    at.button[0].click().run()
    assert_clean(at)
    launcher = Launcher(RunStore(tmp_path))
    (run,) = launcher.list_runs()
    try:
        assert run["config"]["taps"]["recompute_weights"] is True
    finally:
        launcher.cancel(run["id"], grace_s=2)


@pytest.mark.parametrize("change, message", [
    (lambda at: _lam(at).set_value("-1"), "λ must be a finite number ≥ 0"),
    (lambda at: _lam(at).set_value(" "), "enter at least one λ value"),
    (lambda at: _lam(at).set_value("0.1, abc"), "λ value 'abc' is not a number"),
    (lambda at: _lam(at).set_value("nan"), "λ must be a finite number ≥ 0"),
    (lambda at: _number(at, "Learning rate").set_value(0.0), "lr must be > 0"),
    (lambda at: (at.selectbox[1].set_value("a folder of images…").run(),
                 _text(at, "Folder").set_value("/no/such/folder")), "No folder at /no/such/folder"),
])
def test_bad_input_shows_a_message_and_launches_nothing(tmp_path, monkeypatch, change, message):
    at = app(tmp_path, monkeypatch)
    change(at)
    at.run()
    at.button[0].click().run()
    assert_clean(at)
    errors = " ".join(e.value for e in at.error)
    assert message in errors
    assert "Nothing was launched" in errors or "failed" in errors
    assert at.title[0].value == "Launch a run"  # still here, nothing switched to Runs
    assert RunStore(tmp_path).list_runs() == []
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # not even a run folder


def test_launch_a_tiny_run_and_watch_it_finish_with_a_heatmap(tmp_path, monkeypatch):
    at = app(tmp_path, monkeypatch)
    _tiny_form(at)
    at.button[0].click().run()
    assert_clean(at)
    assert at.title[0].value == "Runs"
    assert "Launched 1 run" in at.success[0].value
    store = RunStore(tmp_path)
    (run,) = store.list_runs()
    assert run["config"]["data"]["resolution"] == 32 and run["config"]["sparsity"]["lam"] == 0.3

    run_until(at, _finished, timeout=240)
    run = store.get_run(run["id"])
    assert run["status"] == "done"
    loss, accuracy, heatmap = charts(at)
    steps = [s["step"] for s in store.steps_since(run["id"])]
    assert list(trace(loss, "task loss")["x"]) == steps
    assert list(trace(accuracy, "test")["y"]) == [e["test_acc"] for e in store.epochs(run["id"])]
    hm = trace(heatmap, type_="heatmap")
    _, matrix = store.scores_matrix(run["id"])
    z = np.asarray(hm["z"])
    assert z.shape == (49, len(steps))  # Lite0's 49 gated layers × every step of this short run
    np.testing.assert_allclose(z, np.asarray(matrix, dtype=np.float32).T)
    assert hm["y"][0].endswith(run["layer_names"][0])
    assert [p.value for p in at.get("progress")] == [100]
    active = run["metrics"]["active_layers"]
    assert any(e.label.startswith(f"Layer report: {active} of 49 layers task-specific") for e in at.expander)


def test_runs_page_cancels_and_resumes_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "0.4")
    store = RunStore(tmp_path)
    run_id = Launcher(store).launch(dict(TINY, epochs=2))
    at = app(tmp_path, monkeypatch, RUNS, query={"run": run_id})
    run_until(at, lambda at: store.get_run(run_id)["last_step"] >= 2, timeout=120, poll=0.3)
    assert [b.label for b in at.button] == ["Cancel"]
    at.button[0].click().run()
    assert_clean(at)
    cancelled = store.get_run(run_id)
    assert cancelled["status"] == "cancelled"
    assert at.subheader[0].value.endswith(":orange-badge[cancelled]")
    assert [b.label for b in at.button] == ["Resume"]

    monkeypatch.delenv("TAPS_WORKER_STEP_DELAY")
    at.button[0].click().run()
    assert_clean(at)
    run_until(at, _finished, timeout=240)
    steps = [s["step"] for s in store.steps_since(run_id)]
    assert steps == list(range(1, store.get_run(run_id)["total_steps"] + 1))  # no gap, no repeat


def test_runs_page_with_no_runs_points_to_launch(tmp_path, monkeypatch):
    at = app(tmp_path, monkeypatch, RUNS)
    assert "No runs yet" in at.info[0].value


# ----------------------------------------------------------------------------- a finished sweep

@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """One tiny sweep, λ ∈ {0.1, 1, 10} plus both baselines, trained once for the tests below."""
    root = tmp_path_factory.mktemp("sweep-runs")
    store = RunStore(root)
    # Fast-moving scores and no penalty ramp, so a 6-step run already spans the range: λ=0.1
    # keeps every layer task-specific, λ=10 none.
    config = dict(TINY, score_lr=0.5, penalty_warmup=0.0)
    # Queued as the Launch page does, then each run's worker body in this process: the pages read
    # the same store, without five worker start-ups (the launcher's own are tested elsewhere).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Launcher, "schedule", lambda self: [])
        sweep_id, ids = Launcher(store).sweep(config, [0.1, 1.0, 10.0], baselines=True, name="tiny-sweep")
    for run_id in ids:
        assert worker.run(store, run_id) == 0
    assert {store.get_run(run_id)["status"] for run_id in ids} == {"done"}
    return root, store, ids


def test_frontier_page_draws_the_sweep_and_its_pareto_front(sweep_store, monkeypatch):
    root, store, ids = sweep_store
    at = app(root, monkeypatch, FRONTIER)
    assert at.selectbox[0].value == "tiny-sweep"
    points = store.frontier("tiny-sweep")
    (fig,) = charts(at)
    x = "task_specific_layers_pct"
    drawn = {cd: (px, py) for t in fig["data"] if t.get("customdata") is not None and t["mode"] != "lines"
             for cd, px, py in zip(t["customdata"], t["x"], t["y"])}
    assert drawn == {p["run_id"]: (p[x], p["test_acc"]) for p in points}
    front = figures.pareto_front(points, x, "test_acc")
    if len(front) > 1:
        line = trace(fig, "Pareto front")
        assert list(line["x"]) == [p[x] for p in front] and list(line["y"]) == [p["test_acc"] for p in front]
    ref_lines = sorted(s["y0"] for s in fig["layout"]["shapes"])
    assert ref_lines == sorted(p["test_acc"] for p in points if p["method"] in ("finetune", "feature_extractor"))
    taps_labels = sorted(t for tr in fig["data"] if tr.get("name", "").startswith("TAPS") for t in tr["text"])
    assert taps_labels == ["λ=0.1", "λ=1", "λ=10"]

    at.radio[1].set_value("additional_params_pct").run()
    (fig,) = charts(at)
    drawn = {cd: px for t in fig["data"] if t.get("customdata") is not None and t["mode"] != "lines"
             for cd, px in zip(t["customdata"], t["x"])}
    assert drawn == {p["run_id"]: p["additional_params_pct"] for p in points}
    assert fig["layout"]["xaxis"]["title"]["text"] == "% additional parameters"

    target = ids[1]
    at.selectbox[1].set_value(target).run()
    at.button[0].click().run()
    assert_clean(at)
    assert at.title[0].value == "Runs"
    assert f"`{target}`" in at.caption[0].value


def test_layer_patterns_page_shows_each_runs_final_layers(sweep_store, monkeypatch):
    root, store, ids = sweep_store
    at = app(root, monkeypatch, PATTERNS)
    assert sorted(at.multiselect[0].value) == sorted(ids)
    (fig,) = charts(at)
    hm = trace(fig, type_="heatmap")
    z = np.asarray(hm["z"])
    by_label = {label: row for label, row in zip(hm["y"], z)}
    for run in store.list_runs():
        row = next(v for k, v in by_label.items() if k.startswith(run["name"] + " ·"))
        assert list(row) == [int(s >= 0.1) for s in final_scores(store, run["id"])]
    finetune = next(v for k, v in by_label.items() if k.startswith("finetune ·"))
    assert finetune.sum() == 49  # full fine-tuning adapts every layer; the feature extractor none
    assert next(v for k, v in by_label.items() if k.startswith("feature_extractor ·")).sum() == 0


def _fashion_image(index: int) -> tuple[bytes, int]:
    from taps.data import load_dataset

    data = load_dataset("fashion-mnist", resolution=28, test_subset=20, mean=(0, 0, 0), std=(1, 1, 1),
                        augment=False)
    x, label = data.test[index]
    buf = io.BytesIO()
    Image.fromarray((x[0].numpy() * 255).round().astype("uint8")).save(buf, format="PNG")
    return buf.getvalue(), label


def test_task_packs_page_lists_sizes_and_classifies_an_upload(sweep_store, monkeypatch):
    from taps.data import decode_image
    from taps.inference import classify, load_task_model

    root, store, ids = sweep_store
    at = app(root, monkeypatch, PACKS)
    table = at.dataframe[0].value
    assert len(table) == len(ids)
    for _, row in table.iterrows():
        pack = store.artifacts(row["run_id"], kind="pack")[0]
        assert row["pack bytes"] == pack["bytes"]
        assert row["pack bytes"] < row["full model bytes"] * 1.1
    taps_packs = table[table["method"] == "taps"].sort_values("λ")["pack bytes"].tolist()
    finetune = table[table["method"] == "finetune"]["pack bytes"].iloc[0]
    # λ=0.1 kept every layer: as large as full fine-tuning, up to the packs' JSON metadata (the
    # configs differ by a few bytes); the smallest layer's delta is over 1 KB, so none is missing.
    assert abs(taps_packs[0] - finetune) < 512
    assert taps_packs[-1] < finetune / 10  # λ=10 kept none: norms and head only

    run_id = table["run_id"].iloc[0]  # the first pack is the one selected
    assert at.selectbox[0].value == store.artifacts(run_id, kind="pack")[0]["path"]
    png, label = _fashion_image(3)
    at.file_uploader[0].set_value(("item.png", png, "image/png")).run()
    assert_clean(at)
    model, pack = load_task_model(store.artifacts(run_id, kind="pack")[0]["path"])
    expected = classify(model, pack, [decode_image(png)], top_k=5)[0]
    (chart,) = charts(at)
    bars = trace(chart, type_="bar")
    assert list(bars["y"])[::-1] == [c for c, _ in expected]
    np.testing.assert_allclose(list(bars["x"])[::-1], [p for _, p in expected], rtol=1e-6)
    assert at.success[0].value.startswith(f"Predicted: **{expected[0][0]}**")

    at.file_uploader[0].set_value(("notes.png", b"these are not pixels", "image/png")).run()
    assert_clean(at)
    assert "not an image" in at.error[0].value


def test_pages_with_two_hundred_runs(tmp_path, monkeypatch):
    from benchmarks.synthetic_store import populate

    store = RunStore(tmp_path)
    populate(store, 200, 20)
    at = app(tmp_path, monkeypatch, RUNS)
    assert len(at.dataframe[0].value) == 200
    assert at.subheader[0].value.endswith(":green-badge[done]")
    at.switch_page(FRONTIER).run()
    assert_clean(at)
    (fig,) = charts(at)
    assert sum(len(t["customdata"]) for t in fig["data"] if t.get("customdata") is not None
               and t["mode"] != "lines") == 5  # the newest sweep's 5 runs
    at.switch_page(PATTERNS).run()
    assert_clean(at)
    assert len(at.multiselect[0].value) == 5


def test_joint_run_from_the_form_shows_each_task(tmp_path, monkeypatch):
    at = app(tmp_path, monkeypatch)
    at.selectbox[2].set_value("joint").run()
    assert at.multiselect[0].value == ["hanzi", "fashion-mnist"]
    _tiny_form(at)
    at.button[0].click().run()
    assert_clean(at)
    store = RunStore(tmp_path)
    (run,) = store.list_runs()
    assert run["config"]["data"]["tasks"] == ["hanzi", "fashion-mnist"] and run["dataset"] == "hanzi + fashion-mnist"
    run_until(at, _finished, timeout=300)
    run = store.get_run(run["id"])
    loss, accuracy, *heatmaps = charts(at)
    assert {t["name"] for t in loss["data"]} >= {"hanzi", "fashion-mnist"}
    assert [h["layout"]["title"]["text"].split(": ")[-1] for h in heatmaps] == ["hanzi", "fashion-mnist"]
    _, matrix = store.scores_matrix(run["id"])
    for k, h in enumerate(heatmaps):
        np.testing.assert_allclose(np.asarray(trace(h, type_="heatmap")["z"]),
                                   np.asarray(matrix, dtype=np.float32)[:, 49 * k:49 * (k + 1)].T)

    at.switch_page(FRONTIER).run()
    assert_clean(at)
    at.selectbox[0].set_value("fashion-mnist").run()
    (fig,) = charts(at)
    joint = trace(fig, "joint TAPS")
    assert list(joint["y"]) == [run["metrics"]["tasks"]["fashion-mnist"]["test_acc"]]

    at.switch_page(PACKS).run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert sorted(table["dataset"]) == ["fashion-mnist", "hanzi"]
    for _, row in table.iterrows():
        assert row["test acc"] == run["metrics"]["tasks"][row["dataset"]]["test_acc"]
