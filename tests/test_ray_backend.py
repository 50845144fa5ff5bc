"""The Ray backend for real: a local Ray instance, a tiny run whose events reach the store live,
every file a run writes (stage packs, a joint run's packs and base, checkpoints) shipped to the
store, and a run stopped mid-way resuming from the checkpoint it shipped."""
import os
import signal
import time

import pytest
import ray
import torch

import taps
from taps.errors import ConfigError
from taps.inference import evaluate_on, evaluate_pack
from taps.method.multitask import MultiTaskModel
from taps.training.joint import BASE, task_pack_name
from taps.training.trainer import CHECKPOINT, PACK
from tests.helpers import FAST_RUN, poll_until, step_numbers
from workbench.launcher import DISAPPEARED, LOG_NAME
from workbench.ray_backend import RayLauncher
from workbench.store import RunStore
from speed import patience

TINY = dict(resolution=32, train_subset=96, eval_subset=50, batch_size=16, epochs=2, lr=0.02)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_run_reports_live_into_the_store(tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "0")
    store = RunStore(tmp_path)
    launcher = RayLauncher(store)
    run_id = launcher.launch(dict(TINY, lam=1.0))
    assert store.get_run(run_id)["backend"] == "ray"
    seen_while_running = []
    deadline = time.time() + 300
    while time.time() < deadline:
        run = store.get_run(run_id)
        if run["status"] == "running":
            seen_while_running += [s["step"] for s in store.steps_since(run_id)]
        if run["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.2)
    run = store.get_run(run_id)
    assert run["status"] == "done", run["error"]
    steps = [s["step"] for s in store.steps_since(run_id)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == run["total_steps"]
    assert seen_while_running and min(seen_while_running) < len(steps)  # events arrived before the end
    assert [e["epoch"] for e in store.epochs(run_id)] == [0, 1]
    assert run["metrics"]["test_acc"] == store.epochs(run_id)[-1]["test_acc"]
    _, matrix = store.scores_matrix(run_id)
    assert len(matrix) == len(steps) and all(len(row) == 49 for row in matrix)
    pack = [a for a in store.artifacts(run_id) if a["kind"] == "pack"]
    assert pack and taps.read_pack(pack[0]["path"]).metadata["lam"] == 1.0


def test_bad_config_is_refused_before_anything_reaches_ray(tmp_path, local_ray):
    store = RunStore(tmp_path)
    launcher = RayLauncher(store)
    with pytest.raises(ConfigError, match="lam must be ≥ 0"):
        launcher.launch(dict(TINY, lam=-1.0))
    assert store.list_runs() == []


def test_cli_sweep_on_ray_waits_and_records(tmp_path, local_ray):
    import subprocess
    import sys

    # The command line joins a running cluster (this module's local one), as on a real cluster.
    address = ray.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "workbench", "--runs-dir", str(tmp_path), "sweep", "--backend", "ray",
            "--address", address, "--lams", "0.5", "--epochs", "1", "--name", "cluster-sweep"]
    for key, value in TINY.items():
        if key != "epochs":
            args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=patience(400),
                          env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = RunStore(tmp_path).list_runs(sweep="cluster-sweep")
    assert [(r["backend"], r["status"], r["lam"]) for r in runs] == [("ray", "done", 0.5)]
    assert f"{runs[0]['id']}: done" in proc.stdout


def test_lambda_path_on_ray_leaves_every_stage_pack_in_the_store(tmp_path, local_ray):
    store = RunStore(tmp_path)
    launcher = RayLauncher(store)
    run_id = launcher.launch(dict(TINY, epochs=1, lam_path=[0.0, 1.0, 4.0], path_stage_epochs=1))
    assert launcher.wait(run_id, timeout=patience(300)) == {run_id: "done"}, store.get_run(run_id)["error"]
    folder = store.run_dir(run_id)
    stages = [folder / f"stage-{i}.safetensors" for i in range(3)]
    assert {a["path"] for a in store.artifacts(run_id, "pack")} == {str(p) for p in [*stages, folder / PACK]}
    assert {a["path"] for a in store.artifacts(run_id, "checkpoint")} == {str(folder / CHECKPOINT)}
    path = store.get_run(run_id)["metrics"]["path"]
    assert [p["snapshot"] for p in path] == [str(p) for p in stages]  # the stored packs, not the node's
    assert [p["pack"] for p in store.frontier() if p["run_id"] == run_id] == [str(p) for p in stages]  # its points too
    for point, stage in zip(path, stages):
        assert taps.read_pack(stage).metadata["lam"] == point["lam"]
        # the shipped snapshot is the model that scored what the run recorded
        assert evaluate_pack(stage, eval_subset=TINY["eval_subset"])["accuracy"] == pytest.approx(point["test_acc"])
    assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == 2
    assert f"run {run_id} done after 3 epochs" in (folder / LOG_NAME).read_text()


def test_joint_run_on_ray_leaves_every_task_pack_and_the_base_in_the_store(tmp_path, local_ray):
    tasks = ["fashion-mnist", "digits"]
    store = RunStore(tmp_path)
    launcher = RayLauncher(store)
    run_id = launcher.launch(dict(TINY, train_subset=64, epochs=1, tasks=tasks, lam=1.0))
    assert launcher.wait(run_id, timeout=patience(300)) == {run_id: "done"}, store.get_run(run_id)["error"]
    folder = store.run_dir(run_id)
    packs = {t: str(folder / task_pack_name(t)) for t in tasks}
    assert {a["path"] for a in store.artifacts(run_id, "pack")} == set(packs.values())
    assert [a["path"] for a in store.artifacts(run_id, "base")] == [str(folder / BASE)]
    metrics = store.get_run(run_id)["metrics"]["tasks"]
    mt = MultiTaskModel.from_packs(packs)  # the trained base, found beside the stored packs
    for task in tasks:
        got = evaluate_on(mt.task_model(task), mt.task_metadata(task), eval_subset=TINY["eval_subset"])
        assert got["accuracy"] == metrics[task]["test_acc"]


@pytest.mark.parametrize("stop", ["cancel", "kill"])
def test_ray_run_stopped_mid_way_resumes_from_the_checkpoint_it_shipped(tmp_path, local_ray, monkeypatch, stop):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "0.4")
    store = RunStore(tmp_path)
    launcher = RayLauncher(store)
    # A λ path of three one-epoch stages: the resumed task also finds the stage packs shipped before.
    run_id = launcher.launch(dict(FAST_RUN, epochs=1, lam_path=[0.0, 1.0, 4.0], path_stage_epochs=1))
    folder, per_epoch = store.run_dir(run_id), FAST_RUN["train_subset"] // FAST_RUN["batch_size"]
    # the first epoch's checkpoint reached the store, and the second epoch goes on
    poll_until(lambda: (folder / CHECKPOINT).exists() and store.get_run(run_id)["last_step"] > per_epoch, 120)
    if stop == "cancel":
        assert launcher.cancel(run_id, grace_s=patience(30)) == "cancelled"
        assert f"run {run_id} cancelled after" in (folder / LOG_NAME).read_text()  # it stopped itself
    else:  # the task's process dies, as on a lost node: only what it shipped is left
        os.kill(store.get_run(run_id)["pid"], signal.SIGKILL)
        poll_until(lambda: launcher.reap(), 30)
        assert (store.get_run(run_id)["status"], store.get_run(run_id)["error"]) == ("failed", DISAPPEARED)
    stopped_at = time.time()
    kept = (torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] + 1) * per_epoch  # steps it holds
    assert per_epoch <= kept < 3 * per_epoch
    before = {s["step"]: s["t"] for s in store.steps_since(run_id)}

    monkeypatch.delenv("TAPS_WORKER_STEP_DELAY")
    assert launcher.resume(run_id) in ("queued", "running")
    assert launcher.wait(run_id, timeout=patience(240)) == {run_id: "done"}, store.get_run(run_id)["error"]
    steps = store.steps_since(run_id)
    assert step_numbers(store, run_id) == list(range(1, 3 * per_epoch + 1))
    # the resumed task trained from the first step after the checkpoint on, not from step 1
    assert {s["step"]: s["t"] for s in steps if s["step"] <= kept} == {i: before[i] for i in range(1, kept + 1)}
    assert min(s["t"] for s in steps if s["step"] > kept) > stopped_at
    assert [e["epoch"] for e in store.epochs(run_id)] == [0, 1, 2]
    assert "resuming from" in (folder / LOG_NAME).read_text()
    assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == 2
    stages = [str(folder / f"stage-{i}.safetensors") for i in range(3)]
    assert [p["snapshot"] for p in store.get_run(run_id)["metrics"]["path"]] == stages
    assert {a["path"] for a in store.artifacts(run_id, "pack")} == {*stages, str(folder / PACK)}
