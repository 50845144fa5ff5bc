"""Fault injection: processes killed mid-write, the launcher killed while runs train, a full disk,
damaged stores and packs, two launchers at once, and a queue under load. Each test injects the
fault into real worker processes (or the worker's own code, in this process) and checks that what
was recorded before it is intact and that the run can go on.

The kill -9 of a worker mid-epoch is ``test_launcher.py::test_kill_9_is_reaped_then_resume_completes``."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import taps
import taps.fileio
from app_testing import app
from taps.errors import DiskFullError
from taps.inference import load_task_model
from taps.training.trainer import CHECKPOINT, PACK, TrainConfig
from tests.helpers import (FAST_RUN, disk_full, faulty_open, kill_this_process, poll_until, scramble,
                           step_numbers, tiny_resnet)
from workbench import worker
from workbench.launcher import DISAPPEARED, LOG_NAME, Launcher
from workbench.hardware import usable_cores
from workbench.processes import process_alive
from workbench.store import DB_NAME, TERMINAL, RunStore, StoreError
from speed import patience

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = FAST_RUN["train_subset"] // FAST_RUN["batch_size"]


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs") as s:
        yield s


def _python(call: str, **popen) -> subprocess.Popen:
    """A Python process running ``call`` (an expression using ``tests.test_faults``) from the
    project folder, as a worker or a second launcher would run."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **popen.pop("env", {}))
    return subprocess.Popen([sys.executable, "-c", f"import tests.test_faults as t; {call}"], cwd=ROOT, env=env,
                            **popen)


def _queued(store, **changes) -> str:
    return store.create_run(TrainConfig.from_flat(**{**FAST_RUN, **changes}).validate().to_dict())


def _step_records_are_whole(store, run_id, epochs: int) -> None:
    """Every step 1…N of the run recorded once, in order, and one record per epoch."""
    run = store.get_run(run_id)
    assert run["total_steps"] == STEPS_PER_EPOCH * epochs
    assert step_numbers(store, run_id) == list(range(1, run["total_steps"] + 1))
    assert [e["epoch"] for e in store.epochs(run_id)] == list(range(epochs))


# ------------------------------------------------------------------- killed half-way through a write

def _worker_killed_while_writing(root: str, run_id: str, filename: str, nth: int) -> None:
    """Entry point of a worker process that kills itself (SIGKILL) half-way through its nth
    write of ``filename``."""
    taps.fileio.open = faulty_open(filename, kill_this_process, nth=nth)
    sys.exit(worker.main(["--store", root, "--run", run_id]))


def test_worker_killed_while_writing_its_checkpoint_keeps_the_previous_one_and_resumes(store):
    run_id = _queued(store, epochs=3)
    proc = _python(f"t._worker_killed_while_writing({str(store.root)!r}, {run_id!r}, {CHECKPOINT!r}, 2)")
    assert proc.wait(timeout=patience(180)) == -signal.SIGKILL  # died writing epoch 1's checkpoint

    folder = store.run_dir(run_id)
    assert (folder / (CHECKPOINT + ".tmp")).stat().st_size == 100  # the half-written file
    assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == 0  # epoch 0's, whole
    launcher = Launcher(store, max_concurrent=1)
    assert launcher.reap() == [run_id]
    run = store.get_run(run_id)
    assert (run["status"], run["error"]) == ("failed", DISAPPEARED)
    recorded = step_numbers(store, run_id)
    assert recorded == list(range(1, len(recorded) + 1)) and len(recorded) >= STEPS_PER_EPOCH

    assert launcher.resume(run_id) == "running"
    assert launcher.wait(run_id, timeout=patience(180)) == {run_id: "done"}
    _step_records_are_whole(store, run_id, epochs=3)
    assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == 2
    assert not (folder / (CHECKPOINT + ".tmp")).exists()
    assert f"resuming from {folder / CHECKPOINT}" in (folder / LOG_NAME).read_text()


def _killed_while_saving_pack(path: str) -> None:
    """Entry point of a process that dies half-way through saving another pack over ``path``."""
    model = taps.adapt(tiny_resnet())
    scramble(model, seed=1)
    taps.fileio.open = faulty_open(Path(path).name, kill_this_process)
    taps.save_pack(model, path)


def test_process_killed_while_writing_a_pack_leaves_the_previous_pack_intact(tmp_path):
    model = taps.adapt(tiny_resnet())
    scramble(model, seed=0)
    path = taps.save_pack(model, tmp_path / "task.safetensors", class_names=list("abcde"))
    before = taps.read_pack(path)

    proc = _python(f"t._killed_while_saving_pack({str(path)!r})")
    assert proc.wait(timeout=patience(120)) == -signal.SIGKILL
    assert (tmp_path / "task.safetensors.tmp").stat().st_size == 100

    after = taps.read_pack(path)
    assert after.metadata == before.metadata
    assert after.tensors.keys() == before.tensors.keys()
    assert all(torch.equal(after.tensors[k], before.tensors[k]) for k in before.tensors)
    taps.save_pack(model, path)  # the next save replaces the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.safetensors"]


# ------------------------------------------------------------------- the launcher (app) killed

def _launch_then_wait(root: str) -> None:
    """Entry point of a launcher process (the app): queue two runs, one at a time, print their
    ids, then wait to be killed."""
    launcher = Launcher(RunStore(root), max_concurrent=1)
    print(json.dumps([launcher.launch(FAST_RUN), launcher.launch(dict(FAST_RUN, lam=1.0))]), flush=True)
    time.sleep(600)


def test_runs_go_on_when_the_launcher_is_killed_and_a_new_one_sees_them(store):
    proc = _python(f"t._launch_then_wait({str(store.root)!r})", stdout=subprocess.PIPE, text=True,
                   env={"TAPS_WORKER_STEP_DELAY": "0.3"})
    try:
        first, second = json.loads(proc.stdout.readline())
        poll_until(lambda: store.get_run(first)["last_step"] >= 1, 120)  # training
    finally:
        proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL

    run = store.get_run(first)
    assert run["status"] == "running" and process_alive(run["pid"], run["pid_create_time"])
    assert store.get_run(second)["status"] == "queued"
    app = Launcher(RunStore(store.root))  # a new app on the same runs folder
    assert app.max_concurrent == 1
    assert {r["id"]: r["status"] for r in app.list_runs()} == {first: "running", second: "queued"}
    # Nothing schedules from here on: the first run's worker starts the second when it ends.
    poll_until(lambda: all(r["status"] in TERMINAL for r in app.list_runs()), 180, poll=0.25)
    for run_id in (first, second):
        assert store.get_run(run_id)["status"] == "done"
        _step_records_are_whole(store, run_id, epochs=2)
    assert store.get_run(second)["started_at"] >= store.get_run(first)["finished_at"] - 0.5


# ------------------------------------------------------------------- a full disk

def test_disk_full_while_recording_metrics_fails_the_run_clearly_and_keeps_earlier_steps(store, monkeypatch):
    run_id = _queued(store)
    conn = store.connection()  # the worker runs in this thread: this is its connection
    real_executemany = conn.executemany
    full = {"disk": True}

    def executemany(sql, rows):
        rows = list(rows)
        if full["disk"] and "INTO steps" in sql and any(row[2] >= 1 for row in rows):  # epoch 1 on
            raise sqlite3.OperationalError("database or disk is full")
        return real_executemany(sql, rows)

    monkeypatch.setattr(conn, "executemany", executemany)
    assert worker.run(store, run_id) == 1
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert f"cannot write to the run store {store.db_path}" in run["error"] and "the disk is full" in run["error"]
    assert step_numbers(store, run_id) == list(range(1, STEPS_PER_EPOCH + 1))  # epoch 0, whole
    assert [e["epoch"] for e in store.epochs(run_id)] == [0]
    # epoch 1's steps could not be recorded, so its checkpoint was not written: resuming redoes it
    assert torch.load(store.run_dir(run_id) / CHECKPOINT, weights_only=True)["epoch"] == 0

    full["disk"] = False  # space was freed: resuming completes the run
    store.set_status(run_id, "queued")
    assert worker.run(store, run_id) == 0
    assert store.get_run(run_id)["status"] == "done"
    _step_records_are_whole(store, run_id, epochs=2)


@pytest.mark.parametrize("filename, nth", [(PACK, 1), (CHECKPOINT, 2)])
def test_disk_full_while_writing_a_pack_or_checkpoint_names_the_file_and_keeps_the_last_one(
        store, monkeypatch, filename, nth):
    run_id = _queued(store)
    folder = store.run_dir(run_id)
    monkeypatch.setattr(taps.fileio, "open", faulty_open(filename, disk_full, nth=nth), raising=False)
    assert worker.run(store, run_id) == 1
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith(f"cannot write {folder / filename}: the disk is full (No space left on device)")
    assert not (folder / (filename + ".tmp")).exists()
    assert step_numbers(store, run_id) == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # every step reached
    last_good_epoch = 1 if filename == PACK else 0
    assert torch.load(folder / CHECKPOINT, weights_only=True)["epoch"] == last_good_epoch
    assert not (folder / PACK).exists()

    monkeypatch.delattr(taps.fileio, "open")  # space was freed
    store.set_status(run_id, "queued")
    assert worker.run(store, run_id) == 0
    _step_records_are_whole(store, run_id, epochs=2)
    assert taps.read_pack(folder / PACK).metadata["metrics"]["val_acc"] == store.get_run(run_id)["metrics"]["val_acc"]


def test_disk_full_error_is_an_oserror_with_errno_and_path(tmp_path):
    path = tmp_path / "pack.safetensors"
    with pytest.raises(DiskFullError) as err:
        taps.fileio.atomic_write(path, lambda fh: disk_full())
    assert isinstance(err.value, OSError) and err.value.errno == 28 and err.value.filename == str(path)
    assert str(err.value) == (f"cannot write {path}: the disk is full (No space left on device); nothing was "
                              "written. Free some space, then try again (a run: resume it).")


# ------------------------------------------------------------------- a damaged store or pack

def _store_with_a_run(root: Path) -> tuple[str, bytes]:
    """A closed store holding one run with 300 recorded steps, all in the main database file."""
    with RunStore(root) as s:
        run_id = s.create_run(TrainConfig.from_flat(**FAST_RUN).to_dict())
        s.record_steps(run_id, [dict(step=i, epoch=0, loss=1.0, scores=[0.1] * 20) for i in range(1, 301)])
    conn = sqlite3.connect(root / DB_NAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return run_id, (root / DB_NAME).read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:len(b) // 2], "is corrupt or not an SQLite database"),
    (lambda b: b[:4096], "is corrupt or not an SQLite database"),
    (lambda b: b"", "is empty or missing, but .* holds 1 run folder"),
    (None, "is empty or missing, but .* holds 1 run folder"),
], ids=["half", "first-page", "empty", "deleted"])
def test_a_truncated_or_lost_store_is_a_clear_error_never_an_empty_list(tmp_path, monkeypatch, damage, message):
    root = tmp_path / "runs"
    run_id, data = _store_with_a_run(root)
    db = root / DB_NAME
    for extra in (DB_NAME + "-wal", DB_NAME + "-shm"):
        (root / extra).unlink(missing_ok=True)
    if damage is None:
        db.unlink()
    else:
        db.write_bytes(damage(data))
    for open_it in (RunStore, Launcher):
        with pytest.raises(StoreError, match=message) as err:
            open_it(root)
        assert str(db) in str(err.value)
    if damage is None:
        assert run_id in str(err.value)

    at = app(root, monkeypatch)  # the app and the command line say so, with no traceback
    assert at.error[0].value.startswith(f"The run store cannot be opened: the run store database {db} is ")
    res = subprocess.run([sys.executable, "-m", "workbench", "list"], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"error: the run store database {db} is ")


@pytest.mark.parametrize("damage", [
    lambda b: b[:len(b) // 2], lambda b: b[:-10], lambda b: b[:8], lambda b: b"",
    lambda b: b[:8] + b"\xff" * 64 + b[72:],
], ids=["half", "tail-cut", "header-only", "empty", "garbled-header"])
def test_a_truncated_or_damaged_pack_is_refused_naming_the_file(tmp_path, damage):
    model = taps.adapt(tiny_resnet())
    path = taps.save_pack(model, tmp_path / "task.safetensors", extra={"dataset": "digits"})
    path.write_bytes(damage(path.read_bytes()))
    fresh = tiny_resnet()
    for load in (taps.read_pack, lambda p: taps.load_pack(fresh, p), load_task_model,
                 lambda p: taps.MultiTaskModel.from_packs([p])):
        with pytest.raises(taps.PackError, match="is not a readable safetensors task pack") as err:
            load(path)
        assert str(path) in str(err.value)
    assert not taps.gated_layers(fresh)  # a failed load changed nothing


# ------------------------------------------------------------------- two launchers at once

def _schedule_for(root: str, seconds: float) -> None:
    """Entry point of a launcher process that schedules as fast as it can for ``seconds`` and
    prints the runs it started."""
    launcher, started = Launcher(RunStore(root), max_concurrent=2), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started += launcher.schedule()
    print(json.dumps(started), flush=True)


def test_two_launchers_at_once_never_start_a_run_twice_nor_exceed_the_limit(store):
    queued = [_queued(store, seed=i) for i in range(5)]
    env = {"TAPS_WORKER_STEP_DELAY": "30"}  # workers that start stay busy until cancelled
    procs = [_python(f"t._schedule_for({str(store.root)!r}, 3)", stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    started = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    launcher = Launcher(store)
    try:
        both = started[0] + started[1]
        assert len(both) == 2 and set(both) == set(queued[:2])  # two starts in all: the two oldest runs
        statuses = [store.get_run(r)["status"] for r in queued]
        assert statuses == ["running"] * 2 + ["queued"] * 3
        starts = [(store.run_dir(r) / LOG_NAME).read_text().count("starting worker") for r in queued[:2]]
        assert starts == [1, 1]
    finally:
        for run_id in queued[::-1]:  # queued ones first, so a cancelled worker starts nothing
            launcher.cancel(run_id, grace_s=1)
    assert all(store.get_run(r)["status"] == "cancelled" for r in queued)


# ------------------------------------------------------------------- load

def test_a_queue_twice_the_slots_runs_two_at_a_time_with_the_app_polling_every_second(store):
    launcher = Launcher(store, max_concurrent=2)
    # Two waves: every run but the first two waits for a slot (each run costs a worker start-up).
    run_ids = [launcher.launch(dict(FAST_RUN, seed=i), name=f"load {i}") for i in range(4)]
    app = Launcher(RunStore(store.root))  # the app's own launcher, polling as its live pages do
    seen: dict[str, list[int]] = {r: [] for r in run_ids}
    most_running, slowest_poll, polls = 0, 0.0, 0
    deadline = time.monotonic() + patience(300)
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        runs = {r["id"]: r for r in app.list_runs()}
        for run_id, run in runs.items():
            if run["status"] == "running":
                seen[run_id] += [e["step"] for e in app.events_since(run_id, (seen[run_id] or [0])[-1])]
        slowest_poll = max(slowest_poll, time.perf_counter() - t0)
        polls += 1
        most_running = max(most_running, sum(r["status"] == "running" for r in runs.values()))
        if all(r["status"] in TERMINAL for r in runs.values()):
            break
        time.sleep(1.0)

    assert [store.get_run(r)["status"] for r in run_ids] == ["done"] * len(run_ids)
    assert most_running == 2
    for run_id in run_ids:
        _step_records_are_whole(store, run_id, epochs=2)
        assert seen[run_id] == sorted(set(seen[run_id]))  # live steps arrived in order, none twice
    starts = [store.get_run(r)["started_at"] for r in run_ids]
    assert starts == sorted(starts)  # first queued, first started: no run was passed over
    # Two runs share the cores instead of each starting a thread per core (oversubscribed,
    # spinning OpenMP threads made each step several times slower).
    cores = usable_cores()
    shared = f"CPU ({cores // 2} thread{'s' * (cores // 2 > 1)} of {cores} cores)" if cores >= 2 else "CPU (1 cores)"
    if "OMP_NUM_THREADS" not in os.environ:
        assert {store.get_run(r)["device"] for r in run_ids} == {shared}
    assert slowest_poll < 1.0 and polls >= 5
    database = sum(f.stat().st_size for f in store.root.glob(DB_NAME + "*"))
    assert database < 2 * 2**20, f"{database / 2**20:.1f} MiB for 4 runs of {2 * STEPS_PER_EPOCH} steps"
