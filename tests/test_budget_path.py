"""Budget mode (λ found by dual ascent on an annealed target that also caps the gates, the end
state projected onto the budget) and the λ path
(the frontier from one run: stages warm-started from each other, a task pack per stage)."""
import math
import random
import re
import subprocess
import sys

import pytest
import torch

import taps
from taps.training.budget import BudgetController, LayerCosts, project_to_budget
from taps.errors import ConfigError
from taps.inference import evaluate_pack
from taps.training.schedule import build_scheduler, lam_at, plan_stages
from taps.training.trainer import TrainConfig, train
from tests.helpers import FAST_RUN, Recorder, tiny_resnet
from speed import patience

TINY = dict(resolution=32, train_subset=160, eval_subset=100, batch_size=16, epochs=2, lr=0.02)


def _optimizer():
    weights, scores = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [weights], "name": "weights"}, {"params": [scores], "name": "scores"}], lr=1.0)


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_one_stage_schedule_is_cosine_with_scores_frozen_after_gate_freeze():
    opt = _optimizer()
    lrs = _lrs(build_scheduler(opt, 10, 0.7), opt, 10)
    assert [w for w, _ in lrs] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert [s for _, s in lrs] == pytest.approx([w if k < 7 else 0.0 for k, (w, _) in enumerate(lrs)])


def test_stages_restart_the_cosine_and_ramp_lambda_from_the_previous_stage():
    stages = plan_stages([0.5, 2.0], first_epochs=2, later_epochs=1, steps_per_epoch=5)  # 10 + 5 steps
    assert [(s.start, s.steps, s.first_epoch, s.last_epoch) for s in stages] == [(0, 10, 0, 1), (10, 5, 2, 2)]
    opt = _optimizer()
    lrs = _lrs(build_scheduler(opt, 15, 0.6, stages), opt, 15)
    assert [w for w, _ in lrs[10:]] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)])
    assert [s for _, s in lrs[10:]] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 5)),
                                                      0.5 * (1 + math.cos(2 * math.pi / 5)), 0.0, 0.0])
    # λ: 0 → 0.5 over 30 % of stage 0, then 0.5 → 2.0 over 30 % of stage 1
    assert lam_at(stages, 3, 0.3) == pytest.approx(0.5) and lam_at(stages, 1, 0.3) == pytest.approx(0.5 / 3)
    assert lam_at(stages, 10, 0.3) == pytest.approx(0.5)
    assert lam_at(stages, 11, 0.3) == pytest.approx(0.5 + 1.5 * (1 / 1.5))
    assert lam_at(stages, 15, 0.3) == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["layers", "params"])
def test_layer_costs_price_a_gate_state_as_summarize_does(kind):
    model = taps.adapt(tiny_resnet())
    costs = LayerCosts(model, kind)
    rng = random.Random(0)
    for _ in range(5):
        with torch.no_grad():
            for layer in costs.layers:
                layer.score.fill_(0.3 if rng.random() < 0.5 else 0.0)
        stats = taps.summarize(model)
        expected = stats.task_specific_layers_pct if kind == "layers" else stats.additional_params_pct
        active = costs.active([m.score.item() for m in costs.layers])
        assert costs.cost_pct(active) == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["layers", "params"])
@pytest.mark.parametrize("on_share", [0.8, 0.1])  # over budget, and under it (a controller overshoot)
def test_projection_keeps_the_highest_scores_that_fit_the_budget(kind, on_share):
    model = taps.adapt(tiny_resnet())
    layers = [m for _, m in taps.gated_layers(model)]
    rng = random.Random(1)
    with torch.no_grad():
        for i, layer in enumerate(layers):  # distinct scores; a share of the layers on
            layer.score.fill_((0.2 if rng.random() < on_share else 0.0) + 0.001 * i)
    costs = LayerCosts(model, kind)
    original = [m.score.item() for m in layers]
    on, off = project_to_budget(costs, 30.0)
    assert (on if on_share < 0.3 else off) and not (on and off and set(on) & set(off))
    scores = [m.score.item() for m in layers]
    active = costs.active(scores)
    assert costs.cost_pct(active) <= 30.0
    # Maximal: every layer left off either has a lower score than all kept ones or does not fit.
    for i, is_on in enumerate(active):
        if not is_on:
            assert costs.cost_pct([a or j == i for j, a in enumerate(active)]) > 30.0
    if kind == "layers":  # exactly the k = ⌊30 % of L⌋ highest scores
        top = sorted(range(len(layers)), key=lambda i: -original[i])[:int(0.3 * len(layers))]
        assert {i for i, a in enumerate(active) if a} == set(top)


def test_controller_raises_lambda_over_budget_and_lowers_it_under_budget_to_zero():
    model = taps.adapt(tiny_resnet())
    costs = LayerCosts(model, "layers")
    n = len(costs.layers)
    controller = BudgetController(costs, 25.0, gain=0.5)
    assert controller.update([0.3] * n) == pytest.approx(0.5 * 0.75)  # 100 % on: 75 points over
    assert controller.update([0.3] * (n // 2) + [0.0] * (n - n // 2)) == pytest.approx(
        0.375 + 0.5 * (100 * (n // 2) / n - 25) / 100)
    for _ in range(10):
        controller.update([0.0] * n)
    assert controller.lam == 0.0


def test_target_anneals_from_the_starting_cost_to_the_budget_by_a_cubic():
    costs = LayerCosts(taps.adapt(tiny_resnet()), "layers")
    controller = BudgetController(costs, 25.0, gain=0.1, anneal_steps=90, start_pct=100.0)
    assert [controller.target_at(t) for t in (0, 30, 45, 90, 500)] == pytest.approx(
        [100.0, 25 + 75 * (2 / 3) ** 3, 25 + 75 / 8, 25.0, 25.0])
    # λ is driven by the error against the moving target, not the final budget: at step 45 a
    # cost of 40 % is 5.625 points over, where the budget alone would call it 15 over.
    assert controller.update([0.3] * 2 + [0.0] * (len(costs.layers) - 2), 45) == 0.0  # under: stays 0
    n_on = round(0.4 * len(costs.layers))
    cost = 100 * n_on / len(costs.layers)
    lam = controller.update([0.3] * n_on + [0.0] * (len(costs.layers) - n_on), 45)
    assert lam == pytest.approx(0.1 * (cost - (25 + 75 / 8)) / 100)


def test_the_cap_only_switches_layers_off():
    model = taps.adapt(tiny_resnet())
    layers = [m for _, m in taps.gated_layers(model)]
    costs = LayerCosts(model, "layers")
    with torch.no_grad():
        for i, layer in enumerate(layers):  # the first fifth on, with distinct scores
            layer.score.fill_(0.2 + 0.001 * i if i < len(layers) // 5 else 0.0)
    assert project_to_budget(costs, 50.0, switch_on=False) == ([], [])  # under the cap: nothing on
    n_keep = int(0.1 * len(layers))
    on, off = project_to_budget(costs, 100 * n_keep / len(layers), switch_on=False)
    first_fifth = list(range(len(layers) // 5))
    assert on == [] and off == first_fifth[:len(first_fifth) - n_keep]  # the lowest scores go


@pytest.mark.parametrize("kind", ["layers", "params"])
def test_budget_run_ends_within_its_budget(tmp_path, kind):
    rec = Recorder()
    result = train(TrainConfig.from_flat(**TINY, budget_pct=40.0, budget_kind=kind, out_dir=str(tmp_path)), [rec])
    key = "task_specific_layers_pct" if kind == "layers" else "additional_params_pct"
    assert result.metrics[key] <= 40.0
    assert result.metrics["budget_pct"] == 40.0 and result.metrics["lam_final"] == rec.epochs[-1].lam
    assert result.metrics["lam"] == result.metrics["lam_final"]  # the λ it used, not the config's
    lams = [e.lam_now for e in rec.steps]
    assert lams[0] == 0.0 and max(lams) > 0  # λ starts at 0 and is raised while over budget
    assert taps.read_pack(result.pack_path).metadata["lam"] == pytest.approx(result.metrics["lam_final"])
    (point,) = result.metrics["points"]  # the run's frontier point, at the λ it used
    assert (point["kind"], point["lam"], point["budget_pct"], point["budget_kind"], point[key]) == (
        "budget", result.metrics["lam_final"], 40.0, kind, result.metrics[key])
    _the_store_and_tables_show_the_lambda_used(tmp_path, TrainConfig.from_flat(**TINY, budget_pct=40.0, budget_kind=kind),
                                               result.metrics)


def _the_store_and_tables_show_the_lambda_used(tmp_path, config, metrics):
    """A budget run queued, then finished with ``metrics``: no λ while it is not known (not the
    config's 0.3, which it never uses), then the controller's final λ everywhere it is shown."""
    from workbench.store import RunStore
    from workbench.summaries import run_rows

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(config.to_dict(), kind=config.run_kind, lam=config.planned_lam)
    assert (store.get_run(run_id)["kind"], store.get_run(run_id)["lam"]) == ("budget", None)
    store.set_status(run_id, "running")
    store.finish(run_id, "done", metrics=metrics)
    used = metrics["lam_final"]
    assert store.get_run(run_id)["lam"] == used and run_rows([store.get_run(run_id)])[0]["λ"] == used
    assert [(p["kind"], p["lam"]) for p in store.frontier()] == [("budget", used)]
    listed = subprocess.run([sys.executable, "-m", "workbench", "--runs-dir", str(store.root), "list"],
                            capture_output=True, text=True, timeout=patience(120))
    assert f"{used:.4g}" in listed.stdout or f"{used:g}" in listed.stdout, listed.stdout + listed.stderr


def test_cli_prints_the_lambda_a_budget_run_found(tmp_path):
    """Not the --lam the run was given (which a budget run ignores): the λ its pack records."""
    args = [sys.executable, "-m", "taps", "train", "--out-dir", str(tmp_path), "--budget-pct", "40", "--lam", "0.3"]
    for key, value in FAST_RUN.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    trained = subprocess.run(args, capture_output=True, text=True, timeout=patience(300))
    assert trained.returncode == 0, trained.stderr
    row = re.search(r"^λ found for the budget\s{2,}(\S+)$", trained.stdout, re.MULTILINE)
    assert row, trained.stdout
    used = taps.read_pack(tmp_path / "task.safetensors").metadata["lam"]
    assert used > 0 and used != 0.3
    assert float(row[1]) == pytest.approx(used, rel=1e-3)


def test_lambda_path_snapshots_one_task_pack_per_stage(tmp_path):
    rec = Recorder()
    config = TrainConfig.from_flat(**{**TINY, "eval_subset": 60}, lam_path=[0.0, 1.0, 4.0], path_stage_epochs=1,
                         out_dir=str(tmp_path))
    result = train(config, [rec])
    steps_per_epoch = 160 // 16
    assert [e.step for e in rec.steps] == list(range(1, 4 * steps_per_epoch + 1))  # 2 + 1 + 1 epochs
    assert [(e.epoch, e.stage, e.lam) for e in rec.epochs] == [(0, 0, 0.0), (1, 0, 0.0), (2, 1, 1.0), (3, 2, 4.0)]
    assert [p["lam"] for p in result.metrics["path"]] == [0.0, 1.0, 4.0]
    assert len(result.stage_packs) == 3 and result.stage_packs[-1] != result.pack_path
    assert rec.start.total_epochs == 4  # what progress shows as "epoch k/4", not k/2
    for point, pack in zip(result.metrics["path"], result.stage_packs):
        assert point["snapshot"] == pack
        stats = taps.read_pack(pack).metadata["metrics"]
        assert stats["task_specific_layers_pct"] == point["task_specific_layers_pct"]
        # the snapshot reloads to the accuracy recorded when it was taken
        assert evaluate_pack(pack, eval_subset=60)["accuracy"] == pytest.approx(point["test_acc"])
    assert result.metrics["path"][-1]["active_layers"] < result.metrics["path"][0]["active_layers"]
    points = result.metrics["points"]  # one frontier point per stage, each with its own pack and λ
    assert [(p["kind"], p["stage"], p["lam"], p["pack"]) for p in points] == [
        ("path_stage", i, lam, pack) for i, (lam, pack) in enumerate(zip([0.0, 1.0, 4.0], result.stage_packs))]
    assert [p["test_acc"] for p in points] == [p["test_acc"] for p in result.metrics["path"]]


@pytest.mark.parametrize("bad, message", [
    (dict(lam_path=[1.0, 0.5]), "increase"),
    (dict(lam_path=[1.0]), "at least two"),
    (dict(lam_path=[0.1, float("nan")]), "finite"),
    (dict(budget_pct=0), "budget_pct"),
    (dict(budget_pct=120), "budget_pct"),
    (dict(budget_pct=20, budget_kind="bytes"), "budget_kind"),
    (dict(budget_pct=20, method="finetune"), "single-task TAPS"),
    (dict(budget_pct=20, lam_path=[0.1, 1.0]), "not both"),
])
def test_bad_budget_or_path_is_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_flat(**bad).validate()


def test_store_frontier_gives_a_point_per_stage_and_the_figure_joins_them(tmp_path):
    from workbench import figures
    from workbench.store import RunStore
    from workbench.summaries import compute_caption

    store = RunStore(tmp_path)
    path = [{"stage": i, "lam": lam, "val_acc": 0.8 - 0.01 * i, "test_acc": 0.81 - 0.01 * i,
             "task_specific_layers_pct": 90.0 - 30 * i, "additional_params_pct": 80.0 - 30 * i, "active_layers": 4 - i,
             "snapshot": f"stage-{i}.safetensors"} for i, lam in enumerate([0.1, 1.0, 3.0])]
    runs = {}
    for kind, metrics in (("path", {"path": path, "test_acc": 0.79, "task_specific_layers_pct": 30.0}),
                          ("budget", {"budget_pct": 25.0, "budget_kind": "layers", "lam_final": 0.7,
                                      "test_acc": 0.8, "val_acc": 0.8, "task_specific_layers_pct": 24.0,
                                      "additional_params_pct": 20.0})):
        run_id = runs[kind] = store.create_run({"method": "taps", "lam": 0.3, "dataset": "d"})
        store.mark_running(run_id, 1, None)
        store.record_start(run_id, {"total_steps": 100 if kind == "path" else 60, "layer_names": ["a"],
                                    "config": {}, "start_epoch": 0})
        store.finish(run_id, "done", metrics=metrics)
    points = store.frontier()
    stages = [p for p in points if p["kind"] == "path_stage"]
    assert [(p["run_id"], p["stage"], p["lam"], p["test_acc"]) for p in stages] == \
        [(runs["path"], i, lam, 0.81 - 0.01 * i) for i, lam in enumerate([0.1, 1.0, 3.0])]
    (budget,) = [p for p in points if p["kind"] == "budget"]
    assert (budget["run_id"], budget["lam"], budget["budget_pct"]) == (runs["budget"], 0.7, 25.0)
    fig = figures.frontier_figure(points)
    (line,) = [t for t in fig.data if t.name == "λ path (one run)"]
    assert list(line.x) == [90.0, 60.0, 30.0] and list(line.text) == ["λ=0.1", "λ=1", "λ=3"]
    (hexagons,) = [t for t in fig.data if t.name == "TAPS budget"]
    assert list(hexagons.text) == ["≤25% layers"]
    caption = compute_caption(points)  # the path run counted once, though it gives three points
    assert "λ path: 3 points from 1 run, 100 steps" in caption and "budget runs: 1 point from 1 run, 60 steps" in caption


def test_a_queued_path_counts_every_stage_in_the_run_epochs(tmp_path):
    from workbench.launcher import Launcher
    from workbench.store import RunStore

    store = RunStore(tmp_path)
    path = TrainConfig.from_flat(epochs=3, lam_path=[0.1, 0.3, 1.0], path_stage_epochs=2)
    assert (path.planned_epochs, path.planned_lam, path.run_kind) == (7, 0.1, "path")
    launcher = Launcher(store)
    launcher.schedule = lambda: []  # queued only: what the store knows before the run starts
    path_run = launcher.launch(path.to_dict())
    plain_run = launcher.launch(dict(epochs=3, lam=0.3))
    assert (store.get_run(path_run)["epochs"], store.get_run(plain_run)["epochs"]) == (7, 3)
    assert (store.get_run(path_run)["kind"], store.get_run(plain_run)["kind"]) == ("path", "single")
    store.record_start(path_run, {"total_steps": 70, "config": {"epochs": 3}, "start_epoch": 0, "total_epochs": 9})
    assert store.get_run(path_run)["epochs"] == 9  # the trainer's own count wins
