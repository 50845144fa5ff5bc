"""workbench.figures and workbench.summaries: the numbers the app and notebooks draw."""
import numpy as np
import pytest

from workbench import figures
from workbench.store import RunStore
from workbench.summaries import (comparable_run, estimate_run, layer_patterns, measured_run_timing, pack_rows,
                                 planned_steps, run_progress, run_rows, sweep_seconds)


def test_pareto_front_keeps_exactly_the_undominated_points():
    pts = [dict(run_id=i, x=x, y=y) for i, (x, y) in enumerate(
        [(10, 0.80), (20, 0.85), (30, 0.84), (20, 0.83), (5, 0.70), (40, 0.90), (40, 0.88), (0, 0.70)])]
    front = figures.pareto_front(pts, "x", "y")
    assert [(p["x"], p["y"]) for p in front] == [(0, 0.70), (10, 0.80), (20, 0.85), (40, 0.90)]
    for p in pts:  # every other point is beaten by a front point on both axes
        if p not in front:
            assert any(q["x"] <= p["x"] and q["y"] >= p["y"] for q in front)


def test_downsample_is_bounded_even_and_keeps_the_newest():
    rows = list(range(1, 1001))
    out = figures.downsample(rows, 300)
    assert len(out) <= 301 and out[0] == 1 and out[-1] == 1000
    assert figures.downsample(rows[:50], 300) == rows[:50]


def test_heatmap_is_layers_by_steps_with_gates_at_the_threshold():
    scores = [[0.15, 0.05, 0.1], [0.2, 0.09, 0.3]]  # 2 steps × 3 layers
    fig = figures.heatmap_figure([10, 20], scores, ["a", "b", "c"], threshold=0.1, mode="gate")
    np.testing.assert_array_equal(fig.data[0].z, [[1, 1], [0, 0], [1, 1]])
    assert list(fig.data[0].y) == ["0 · a", "1 · b", "2 · c"] and list(fig.data[0].x) == [10, 20]
    fig = figures.heatmap_figure([10, 20], scores, ["a", "b", "c"], threshold=0.1)
    np.testing.assert_allclose(fig.data[0].z, np.array(scores, dtype=np.float32).T)
    assert fig.data[0].zmid == 0.1
    with pytest.raises(ValueError, match="mode"):
        figures.heatmap_figure([1], [[0.1]], ["a"], mode="colour")


def test_frontier_figure_reference_lines_are_the_baselines():
    pts = [dict(kind="run", run_id="a", method="taps", lam=0.1, task_specific_layers_pct=60, additional_params_pct=50, test_acc=0.83),
           dict(kind="run", run_id="b", method="taps", lam=1.0, task_specific_layers_pct=10, additional_params_pct=9, test_acc=0.81),
           dict(kind="run", run_id="c", method="finetune", lam=None, task_specific_layers_pct=100, additional_params_pct=101, test_acc=0.82),
           dict(kind="run", run_id="d", method="feature_extractor", lam=None, task_specific_layers_pct=0, additional_params_pct=0.4, test_acc=0.79)]
    fig = figures.frontier_figure(pts)
    assert sorted(s.y0 for s in fig.layout.shapes) == [0.79, 0.82]
    line = next(t for t in fig.data if t.name == "Pareto front")
    assert list(line.x) == [0, 10, 60] and list(line.y) == [0.79, 0.81, 0.83]
    taps_front = next(t for t in fig.data if t.name == "TAPS")
    assert list(taps_front.text) == ["λ=0.1", "λ=1"]


def test_run_progress_eta_from_finished_epochs_then_from_recent_steps():
    run = dict(status="running", last_step=50, total_steps=200, epochs=4, started_at=1000.0)
    # one epoch (50 steps) took 100 s with its evaluation: 150 steps left ≈ 300 s
    p = run_progress(run, [], [dict(seconds=100.0)], now=1100.0)
    assert p.fraction == 0.25 and p.eta_s == pytest.approx(300.0) and "5 min 00 s left" in p.text
    steps = [dict(step=s, t=1000.0 + 0.5 * s) for s in range(1, 51)]
    assert run_progress(run, steps, [], now=1100.0).eta_s == pytest.approx(75.0)
    assert run_progress(dict(run, status="done", finished_at=1600.0), steps).text == "done after 10 min 00 s"


def test_a_runs_estimate_scales_with_the_step_time_measured_here():
    steps = planned_steps(2000, 32, 3)
    assert steps == 62 * 3 and planned_steps(10, 32, 2) == 2  # full batches; one step when the data is smaller
    one = estimate_run(steps=steps, epochs=3, eval_images=1000, step_s=0.5, eval_image_s=0.002)
    # 186 steps of 0.5 s, and each epoch 1,000 validation and 1,000 test images at 2 ms
    assert one.seconds == pytest.approx(186 * 0.5 + 3 * 2000 * 0.002) and not one.includes_startup
    twice = estimate_run(steps=steps, epochs=3, eval_images=1000, step_s=1.0, eval_image_s=0.002)
    assert twice.seconds - one.seconds == pytest.approx(186 * 0.5)  # twice the step time, twice the training
    joint = estimate_run(steps=steps, epochs=3, eval_images=1000, step_s=0.5, eval_image_s=0.002, tasks=2)
    assert joint.seconds == pytest.approx(2 * one.seconds)  # a batch of each task per step, both evaluated
    # A finished run like it measured its own step (data loading included) and its start-up.
    past = estimate_run(steps=steps, epochs=3, eval_images=1000, step_s=0.5, eval_image_s=0.002,
                        past={"step_s": 0.6, "startup_s": 9.0})
    assert past.seconds == pytest.approx(186 * 0.6 + 12 + 9.0) and past.from_past_run and past.includes_startup


def test_a_sweep_takes_runs_times_a_run_over_the_runs_at_once():
    assert sweep_seconds(90.0, 5, 1) == pytest.approx(450.0)  # a CPU machine: one at a time
    assert sweep_seconds(90.0, 4, 2) == pytest.approx(180.0)
    assert sweep_seconds(90.0, 2, 8) == pytest.approx(90.0)  # more slots than runs: one run's time


def test_a_finished_run_measures_its_step_and_start_up():
    run = dict(started_at=100.0, finished_at=140.0)
    steps = [dict(step=s, epoch=(s - 1) // 4, t=100.0 + s * 0.5 + (10.0 if s > 4 else 0.0)) for s in range(1, 9)]
    epochs = [dict(seconds=15.0), dict(seconds=15.0)]
    timing = measured_run_timing(run, steps, epochs)
    assert timing == {"step_s": 0.5, "startup_s": 10.0}  # the 10.5 s across the evaluation is not a step
    assert measured_run_timing(run, steps[:1], epochs) is None


def test_only_a_finished_run_on_this_host_with_the_same_step_is_comparable():
    config = dict(backbone="efficientnet_lite0", method="taps", resolution=64, batch_size=32, device="auto", tasks=[])
    run = dict(status="done", host="here", backbone="efficientnet_lite0", config=dict(config, lam=1.0, epochs=5))
    assert comparable_run(run, config, "here")  # λ and epochs change the number of steps, not a step
    assert not comparable_run(run, config, "elsewhere")
    assert not comparable_run(dict(run, status="failed"), config, "here")
    for change in (dict(resolution=32), dict(batch_size=64), dict(method="finetune"), dict(tasks=["a", "b"])):
        assert not comparable_run(dict(run, config=dict(run["config"], **change)), config, "here"), change


def test_tables_from_a_store(tmp_path):
    from benchmarks.synthetic_store import populate

    store = RunStore(tmp_path)
    populate(store, 5, 10)
    runs = store.list_runs()
    rows = run_rows(runs)
    assert [r["id"] for r in rows] == [r["id"] for r in runs] and all(r["progress"] == 1.0 for r in rows)
    patterns, names, kinds, tau = layer_patterns(store, runs)
    assert len(patterns) == 5 and len(names) == 49 and tau == 0.1
    assert len({p["label"] for p in patterns}) == 5
    assert pack_rows(store, runs) == []  # synthetic runs wrote no pack files
