"""The launcher and worker processes: queue, concurrency, live events, kill -9, cancel, resume,
validation, sweeps and the command line. Real worker processes on tiny configs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taps.errors import ConfigError, UnknownBackboneError, UnknownDatasetError
from workbench.launcher import DISAPPEARED, Launcher
from workbench.processes import process_alive
from tests.helpers import poll_until, step_numbers
from workbench.store import TERMINAL, RunStore
from speed import patience

TINY = dict(resolution=32, train_subset=64, eval_subset=50, batch_size=16, epochs=2, dataset="fashion-mnist")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs") as s:
        yield s


def test_queue_one_at_a_time_live_events_and_reopen(store, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "0.15")
    launcher = Launcher(store, max_concurrent=1)
    a = launcher.launch(TINY, name="a")
    b = launcher.launch(dict(TINY, lam=1.0), name="b")
    assert store.get_run(a)["status"] == "running"
    assert store.get_run(b)["status"] == "queued"

    # Only reads below (list_runs/events_since reap, never schedule): b is started by a's worker
    # when it ends, so the queue advances with no launcher calling schedule().
    max_running, live_steps, seen_b_queued = 0, [], False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = {r["id"]: r for r in launcher.list_runs()}
        max_running = max(max_running, sum(r["status"] == "running" for r in runs.values()))
        if runs[a]["status"] == "running":
            seen_b_queued |= runs[b]["status"] == "queued"
            after = live_steps[-1] if live_steps else 0
            live_steps += [e["step"] for e in launcher.events_since(a, after)]
        if all(r["status"] in TERMINAL for r in runs.values()):
            break
        time.sleep(0.05)
    assert max_running == 1
    assert seen_b_queued
    # live: steps arrived in increasing order while the run was still running
    assert len(live_steps) >= 2 and live_steps == sorted(set(live_steps)) and live_steps[0] >= 1
    assert live_steps[-1] < store.get_run(a)["total_steps"] or len(live_steps) > 1

    for run_id in (a, b):
        run = store.get_run(run_id)
        assert run["status"] == "done", (run["status"], run["error"])
        assert run["total_steps"] == run["last_step"] > 0
        assert step_numbers(store, run_id) == list(range(1, run["total_steps"] + 1))
        assert len(store.epochs(run_id)) == 2
        assert run["metrics"]["val_acc"] is not None
        kinds = {x["kind"] for x in store.artifacts(run_id)}
        assert {"pack", "checkpoint"} <= kinds
        assert (store.run_dir(run_id) / "log.txt").stat().st_size > 0
    # b started after a ended
    assert store.get_run(b)["started_at"] >= store.get_run(a)["finished_at"] - 0.5

    # a new store and launcher on the same folder see the same runs
    other = Launcher(RunStore(store.root))
    assert other.max_concurrent == 1
    assert {r["id"]: r["status"] for r in other.list_runs()} == {a: "done", b: "done"}


def test_kill_9_is_reaped_then_resume_completes(store, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "0.3")
    launcher = Launcher(store, max_concurrent=1)
    run_id = launcher.launch(dict(TINY, epochs=3))
    # wait until the first epoch is recorded (a checkpoint exists) and steps go on
    poll_until(lambda: store.get_run(run_id)["epochs_done"] >= 1 and
                store.get_run(run_id)["last_step"] > store.get_run(run_id)["total_steps"] // 3, 90)
    before = step_numbers(store, run_id)
    pid = store.get_run(run_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: (launcher._poll_children(), not process_alive(pid, None))[1], 10)
    launcher.schedule()
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == DISAPPEARED
    assert step_numbers(store, run_id)[:len(before)] == before and len(before) > 0
    assert len(store.epochs(run_id)) >= 1

    monkeypatch.delenv("TAPS_WORKER_STEP_DELAY")
    assert launcher.resume(run_id) == "running"
    assert launcher.wait(run_id, timeout=patience(90)) == {run_id: "done"}
    run = store.get_run(run_id)
    assert step_numbers(store, run_id) == list(range(1, run["total_steps"] + 1))
    assert [e["epoch"] for e in store.epochs(run_id)] == [0, 1, 2]
    assert "resuming from" in (store.run_dir(run_id) / "log.txt").read_text()


def test_cancel_running_run_takes_effect_quickly(store, monkeypatch):
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "0.3")
    launcher = Launcher(store, max_concurrent=1)
    run_id = launcher.launch(dict(TINY, epochs=3))
    queued = launcher.launch(TINY)
    assert store.get_run(queued)["status"] == "queued"
    assert launcher.cancel(queued) == "cancelled"  # queued: at once
    poll_until(lambda: store.get_run(run_id)["last_step"] >= 2, 60)
    pid = store.get_run(run_id)["pid"]
    t0 = time.monotonic()
    assert launcher.cancel(run_id, grace_s=10) == "cancelled"
    assert time.monotonic() - t0 < 5
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and run["finished_at"] is not None
    assert not process_alive(pid, None)
    assert "stopping after this step" in (store.run_dir(run_id) / "log.txt").read_text()
    assert store.get_run(queued)["status"] == "cancelled"  # nothing was started after the cancel
    assert store.get_run(queued)["started_at"] is None


@pytest.mark.parametrize("bad, error, message", [
    (dict(backbone="not_a_backbone_xyz"), UnknownBackboneError, "unknown backbone"),
    (dict(dataset="no-such-dataset"), UnknownDatasetError, "Unknown dataset"),
    (dict(lam=-1.0), ConfigError, "lam must be ≥ 0"),
    (dict(epochs=0), ConfigError, "epochs must be"),
])
def test_bad_config_refused_and_nothing_queued(store, bad, error, message):
    launcher = Launcher(store, max_concurrent=1)
    with pytest.raises(error, match=message):
        launcher.launch(dict(TINY, **bad))
    with pytest.raises(error, match=message):  # one bad config in a sweep: none is queued
        launcher.sweep(dict(TINY, **bad), lams=[0.1, 1.0], baselines=True)
    assert store.list_runs() == []
    assert [p for p in store.root.iterdir() if p.is_dir()] == []


def test_sweep_two_lams_and_baselines(store):
    launcher = Launcher(store, max_concurrent=2)
    sweep_id, run_ids = launcher.sweep(dict(TINY, epochs=1), lams=[0.1, 5.0], baselines=True, name="s1")
    assert sweep_id == "s1" and len(run_ids) == 4
    runs = [store.get_run(r) for r in run_ids]
    assert [(r["method"], r["lam"]) for r in runs][:2] == [("taps", 0.1), ("taps", 5.0)]
    assert {r["method"] for r in runs} == {"taps", "finetune", "feature_extractor"}
    assert all(r["sweep"] == "s1" for r in runs)
    assert sum(r["status"] == "running" for r in runs) == 2
    assert launcher.wait(run_ids, timeout=patience(150)) == {r: "done" for r in run_ids}
    frontier = launcher.frontier("s1")
    assert len(frontier) == 4
    assert all(row["val_acc"] is not None for row in frontier)


def _cli(*args, runs_dir):
    env = dict(os.environ, TAPS_RUNS_DIR=str(runs_dir), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=patience(120))


def test_cli_refuses_bad_config_and_lists(tmp_path):
    runs = tmp_path / "runs"
    res = _cli("launch", "--lam", "-1", runs_dir=runs)
    assert res.returncode == 2
    assert "error: lam must be ≥ 0, got -1.0" in res.stderr
    res = _cli("list", runs_dir=runs)
    assert res.returncode == 0 and "no runs" in res.stdout
    res = _cli("show", "r-nope", runs_dir=runs)
    assert res.returncode == 2 and "error: no run" in res.stderr
