"""The Ray backend for real: a local Ray instance, a tiny run whose events reach the store live."""
import time

import pytest
import ray

import taps
from taps.errors import ConfigError
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
