"""The run store: runs, statuses, batched step events, score matrices, concurrency and failures."""
import json
import multiprocessing as mp
import os
import sqlite3
import time

import numpy as np
import pytest

from taps.errors import TAPSError
from taps.training.trainer import EpochEvent, StartEvent, StepEvent, TrainConfig
from workbench.store import (DB_NAME, SCHEMA_VERSION, STEPS_SINCE_SQL, RunStore, StoreError,
                             StoreRecorder)

L = 49
FINAL_METRICS = dict(val_acc=0.81, test_acc=0.79, train_acc=0.9, gated_layers=L, active_layers=12,
                     task_specific_layers_pct=24.5, delta_params=1000, norm_params=10, head_params=50,
                     additional_params=1060, base_params=10000, additional_params_pct=10.6)


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs")
    yield s
    s.close()


def step_dict(step, epoch=0, scores=None, total=1000):
    return dict(step=step, total_steps=total, epoch=epoch, loss=1.0 / step, task_loss=0.5 / step,
                penalty=0.01 * step, lam_now=0.3, lr=0.003, active_layers=step % L,
                images_per_sec=100.0 + step,
                scores=scores if scores is not None else [((step * 7 + i) % 100) / 100 for i in range(L)])


def config(**kw):
    return TrainConfig.from_flat(**kw).to_dict()


# ---------------------------------------------------------------------------------------- runs
def test_create_get_list_roundtrip(store, tmp_path):
    a = store.create_run(config(lam=0.1), name="a", sweep="s1")
    time.sleep(0.01)
    b = store.create_run(config(lam=0.5, method="full"), name="b")
    c = store.create_run(config(lam=1.0), sweep="s1", backend="ray")
    assert a.startswith("r-") and len({a, b, c}) == 3

    run = store.get_run(b)
    assert run["id"] == b and run["name"] == "b" and run["status"] == "queued"
    assert run["method"] == "full" and run["lam"] == 0.5 and run["lr"] == 0.003
    assert run["dataset"] == "hanzi" and run["backbone"] == "efficientnet_lite0"
    assert run["config"] == config(lam=0.5, method="full")  # JSON decoded
    assert run["backend"] == "local" and store.get_run(c)["backend"] == "ray"
    assert run["created_at"] == pytest.approx(time.time(), abs=5)
    assert run["started_at"] is None and run["finished_at"] is None and run["last_step"] == 0
    assert store.get_run("r-nope") is None

    # config.json in the run's own folder
    assert store.run_dir(b) == tmp_path / "runs" / b
    assert json.loads((store.run_dir(b) / "config.json").read_text()) == config(lam=0.5, method="full")

    assert [r["id"] for r in store.list_runs()] == [c, b, a]  # newest first
    assert [r["id"] for r in store.list_runs(sweep="s1")] == [c, a]
    assert [r["id"] for r in store.list_runs(limit=1)] == [c]
    store.set_status(a, "running")
    assert [r["id"] for r in store.list_runs(status="running")] == [a]
    assert [r["id"] for r in store.list_runs(status=["queued"])] == [c, b]
    assert store.sweeps() == ["s1"]


def test_json_fields_decode(store):
    rid = store.create_run(config())
    store.record_start(rid, dict(config=config(), device="cpu", layer_names=["conv1", "fc"],
                                 layer_kinds=["conv", "linear"], layer_params=[864, 1280],
                                 classes=["a", "b"], train_size=100, val_size=10, test_size=20,
                                 total_steps=40, start_epoch=0))
    store.set_status(rid, "running")
    store.finish(rid, "done", metrics=FINAL_METRICS)
    run = store.get_run(rid)
    assert run["layer_names"] == ["conv1", "fc"] and run["layer_kinds"] == ["conv", "linear"]
    assert run["layer_params"] == [864, 1280] and run["classes"] == ["a", "b"]
    assert run["metrics"] == FINAL_METRICS and run["total_steps"] == 40 and run["device"] == "cpu"
    assert (run["train_size"], run["val_size"], run["test_size"]) == (100, 10, 20)
    assert isinstance(run["config"], dict) and run["config"]["sparsity"]["lam"] == 0.3


def test_status_transitions_and_timestamps(store):
    rid = store.create_run(config())
    t0 = time.time()
    store.mark_running(rid, pid=os.getpid(), pid_create_time=123.5, host="hostA", device="cpu")
    run = store.get_run(rid)
    assert run["status"] == "running" and run["pid"] == os.getpid() and run["pid_create_time"] == 123.5
    assert run["host"] == "hostA" and run["device"] == "cpu"
    assert run["started_at"] >= t0 - 1 and run["heartbeat_at"] >= t0 - 1 and run["finished_at"] is None

    time.sleep(0.01)
    hb = run["heartbeat_at"]
    store.heartbeat(rid)
    assert store.get_run(rid)["heartbeat_at"] > hb

    store.finish(rid, "failed", error="boom")
    run = store.get_run(rid)
    assert run["status"] == "failed" and run["error"] == "boom" and run["finished_at"] >= run["started_at"]

    # failed → queued (resume) clears the end of the previous attempt
    store.set_status(rid, "queued")
    run = store.get_run(rid)
    assert run["status"] == "queued" and run["finished_at"] is None and run["error"] is None and run["pid"] is None
    store.set_status(rid, "running")
    store.finish(rid, "done", metrics=FINAL_METRICS)
    assert store.get_run(rid)["status"] == "done"

    for illegal in ("running", "queued", "failed", "cancelled"):
        with pytest.raises(StoreError, match=f"from done to {illegal}"):
            store.set_status(rid, illegal)
    assert store.get_run(rid)["status"] == "done"  # unchanged

    q = store.create_run(config())
    with pytest.raises(StoreError, match="from queued to done"):
        store.finish(q, "done")
    with pytest.raises(StoreError, match="unknown run status"):
        store.set_status(q, "paused")
    with pytest.raises(StoreError, match="no run"):
        store.set_status("r-missing", "running")
    store.set_status(q, "cancelled")
    assert store.get_run(q)["finished_at"] is not None
    store.set_status(q, "queued")  # resume a cancelled run
    assert store.get_run(q)["status"] == "queued"
    assert issubclass(StoreError, TAPSError)


# --------------------------------------------------------------------------------- events
def test_steps_since_exact_ordered_and_indexed(store):
    rid = store.create_run(config())
    other = store.create_run(config())
    store.record_steps(rid, [step_dict(s) for s in range(1, 101)])
    store.record_steps(other, [step_dict(s) for s in range(1, 51)])
    got = store.steps_since(rid, after_step=37)
    assert [d["step"] for d in got] == list(range(38, 101))
    assert got[0]["loss"] == pytest.approx(1 / 38) and got[0]["images_per_sec"] == 138.0
    assert got[0]["active_layers"] == 38 % L and got[0]["epoch"] == 0
    assert [d["step"] for d in store.steps_since(rid, 0, limit=5)] == [1, 2, 3, 4, 5]
    assert store.steps_since(rid, after_step=100) == []
    with_scores = store.steps_since(rid, 98, with_scores=True)
    assert [d["step"] for d in with_scores] == [99, 100]
    assert with_scores[0]["scores"] == pytest.approx(step_dict(99)["scores"], abs=1e-6)
    assert store.get_run(rid)["last_step"] == 100 and store.get_run(rid)["total_steps"] == 1000

    for sql in (STEPS_SINCE_SQL.format(scores="", join=""),
                "SELECT step, scores FROM step_scores WHERE run_id = ? AND step > ? ORDER BY step"):
        plan = " ".join(r[-1] for r in store.connection().execute("EXPLAIN QUERY PLAN " + sql, (rid, 37, -1)
                                                                  if "LIMIT" in sql else (rid, 37)))
        assert "SEARCH" in plan and ("PRIMARY KEY" in plan or "INDEX" in plan), plan
        assert "SCAN" not in plan, plan

    # a resumed run rewriting steps replaces them
    store.record_steps(rid, [dict(step_dict(50), loss=42.0)])
    assert store.steps_since(rid, 49, limit=1)[0]["loss"] == 42.0
    assert len(store.steps_since(rid)) == 100


def test_scores_matrix_float32_roundtrip_and_downsampling(store):
    rid = store.create_run(config())
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(60, L)).astype(np.float32)
    store.record_steps(rid, [step_dict(s + 1, scores=scores[s].tolist()) for s in range(60)])
    steps, matrix = store.scores_matrix(rid)
    assert steps == list(range(1, 61))
    np.testing.assert_array_equal(np.array(matrix, dtype=np.float32), scores)  # bit-exact float32
    assert len(matrix[0]) == L

    steps, matrix = store.scores_matrix(rid, every=10)
    assert steps == [10, 20, 30, 40, 50, 60]
    np.testing.assert_array_equal(np.array(matrix, dtype=np.float32), scores[[9, 19, 29, 39, 49, 59]])
    assert store.scores_matrix(rid, after_step=30, every=10)[0] == [40, 50, 60]
    steps, matrix = store.scores_matrix(rid, limit=3)  # the latest window
    assert steps == [58, 59, 60]
    np.testing.assert_array_equal(np.array(matrix, dtype=np.float32), scores[57:60])
    assert store.scores_matrix("r-missing") == ([], [])


def test_epochs_artifacts_and_delete(store):
    rid = store.create_run(config())
    for e in range(2):
        store.record_epoch(rid, dict(epoch=e, epochs=2, train_loss=1.0 - e / 10, train_acc=0.5, val_acc=0.6 + e / 10,
                                     test_acc=0.55, task_specific_layers_pct=50.0, additional_params_pct=5.0,
                                     active_layers=10, seconds=3.0))
    eps = store.epochs(rid)
    assert [e["epoch"] for e in eps] == [0, 1] and eps[1]["val_acc"] == pytest.approx(0.7)
    assert store.get_run(rid)["epochs_done"] == 2
    ckpt = store.run_dir(rid) / "checkpoint.pt"
    ckpt.write_bytes(b"x" * 123)
    store.add_artifact(rid, "checkpoint", ckpt)
    store.add_artifact(rid, "checkpoint", ckpt)  # re-registered each epoch: one row
    arts = store.artifacts(rid)
    assert len(arts) == 1 and arts[0]["bytes"] == 123 and arts[0]["kind"] == "checkpoint"
    store.record_steps(rid, [step_dict(1)])

    store.set_status(rid, "running")
    with pytest.raises(StoreError, match="running"):
        store.delete_run(rid)
    store.finish(rid, "cancelled")
    assert store.delete_run(rid) is True
    assert store.get_run(rid) is None and not store.run_dir(rid).exists()
    assert store.steps_since(rid) == [] and store.epochs(rid) == [] and store.artifacts(rid) == []
    with pytest.raises(StoreError, match="valid run id"):
        store.run_dir("../etc")


def test_resume_start_drops_epochs_to_be_rewritten(store):
    rid = store.create_run(config())
    store.record_steps(rid, [step_dict(s, epoch=(s - 1) // 10) for s in range(1, 31)])
    store.record_epoch(rid, dict(epoch=0, epochs=3))
    store.record_epoch(rid, dict(epoch=1, epochs=3))
    store.record_start(rid, dict(layer_names=["a"], total_steps=30, start_epoch=1))
    assert [d["step"] for d in store.steps_since(rid)] == list(range(1, 11))
    assert store.scores_matrix(rid)[0] == list(range(1, 11))
    assert [e["epoch"] for e in store.epochs(rid)] == [0]
    assert store.get_run(rid)["last_step"] == 10 and store.get_run(rid)["epochs_done"] == 1


def test_frontier_only_finished_runs_metrics(store):
    done = store.create_run(config(lam=0.5), sweep="lam")
    store.set_status(done, "running")
    store.finish(done, "done", metrics=FINAL_METRICS)
    done2 = store.create_run(config(lam=2.0, method="full"), sweep="other")
    store.set_status(done2, "running")
    store.finish(done2, "done", metrics=dict(FINAL_METRICS, test_acc=0.5, additional_params_pct=100.0))
    running = store.create_run(config(lam=1.0), sweep="lam")
    store.set_status(running, "running")
    failed = store.create_run(config(lam=3.0), sweep="lam")
    store.set_status(failed, "running")
    store.finish(failed, "failed", metrics=FINAL_METRICS, error="NaN")
    store.create_run(config(), sweep="lam")  # queued

    rows = store.frontier()
    assert [r["run_id"] for r in rows] == [done2, done]  # full < taps
    row = rows[1]
    run = store.get_run(done)
    assert row.pop("seconds") == pytest.approx(run["finished_at"] - run["started_at"])  # the run's compute
    assert row == dict(run_id=done, name=None, sweep="lam", method="taps", dataset="hanzi", kind="run",
                       backbone="efficientnet_lite0", lam=0.5, lr=0.003, task_specific_layers_pct=24.5,
                       additional_params_pct=10.6, val_acc=0.81, test_acc=0.79, active_layers=12, total_steps=None,
                       stage=None, budget_pct=None, budget_kind=None, pack=None)
    assert [r["run_id"] for r in store.frontier(sweep="lam")] == [done]
    assert [r["run_id"] for r in store.frontier(run_ids=[done2, running])] == [done2]
    assert rows[0]["test_acc"] == 0.5 and rows[0]["additional_params_pct"] == 100.0


# ------------------------------------------------------------------------ restart, processes
def test_second_store_sees_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RunStore()  # ./runs
    assert first.root == tmp_path / "runs"
    a = first.create_run(config())
    b = first.create_run(config())
    first.set_status(a, "running")
    first.record_steps(a, [step_dict(s) for s in range(1, 11)])
    first.set_status(b, "cancelled")
    first.close()

    monkeypatch.setenv("TAPS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir("/")
    second = RunStore()  # the app restarted
    assert second.root == tmp_path / "runs"
    assert {r["id"]: r["status"] for r in second.list_runs()} == {a: "running", b: "cancelled"}
    assert len(second.steps_since(a)) == 10
    assert second.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert second.connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    second.close()


# The child processes' code. Run with exec() so the child does not import this module: it
# would import torch (via taps.training.trainer and taps/__init__), seconds per child on 2 cores. The store
# itself needs only taps/errors.py, so the child loads that file alone as ``taps.errors``.
_WRITER = """
import importlib.util, os, sys, time
spec = importlib.util.find_spec("taps")
errors = importlib.util.spec_from_file_location("taps.errors", os.path.join(spec.submodule_search_locations[0], "errors.py"))
module = importlib.util.module_from_spec(errors)
sys.modules["taps.errors"] = module
errors.loader.exec_module(module)
try:
    from workbench.store import RunStore
    assert "torch" not in sys.modules
    store = RunStore(root)
    store.mark_running(run_id, os.getpid(), time.time(), "host", "cpu")
    queue.put(("ready", run_id))
    go.wait(30)
    t0 = time.time()
    for start in range(1, n_steps + 1, batch):
        store.record_steps(run_id, [dict(step=s, epoch=0, loss=1.0 / s, scores=[s / 1000] * 49)
                                    for s in range(start, min(start + batch, n_steps + 1))])
        store.heartbeat(run_id)
    store.finish(run_id, "done", metrics={"val_acc": 1.0})
    queue.put((run_id, (t0, time.time())))
except BaseException as e:  # reported to the parent, which fails the test
    queue.put((run_id, repr(e)))
"""


def test_two_processes_write_concurrently(store):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    runs = [store.create_run(config()) for _ in range(2)]
    go = ctx.Event()
    procs = [ctx.Process(target=exec, args=(_WRITER, dict(root=str(store.root), run_id=rid, n_steps=200, batch=5,
                                                            queue=queue, go=go)))
             for rid in runs]
    for p in procs:
        p.start()
    ready = [queue.get(timeout=60) for _ in procs]
    assert sorted(r[1] for r in ready) == sorted(runs), ready
    go.set()  # both write at once
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(isinstance(v, tuple) for v in results.values()), results  # no "database is locked"
    (a0, a1), (b0, b1) = results.values()
    assert a0 < b1 and b0 < a1  # the two writers' windows overlapped
    for rid in runs:
        steps = store.steps_since(rid)
        assert [d["step"] for d in steps] == list(range(1, 201))  # no gaps
        assert steps[-1]["loss"] == pytest.approx(1 / 200)
        s, m = store.scores_matrix(rid)
        assert s == list(range(1, 201)) and m[-1] == [pytest.approx(0.2)] * 49
        run = store.get_run(rid)
        assert run["status"] == "done" and run["last_step"] == 200 and run["metrics"] == {"val_acc": 1.0}


# ------------------------------------------------------------------------------- failures
def test_corrupt_database_raises_with_path(tmp_path):
    root = tmp_path / "runs"
    s = RunStore(root)
    s.create_run(config())
    s.close()
    (root / DB_NAME).write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        (root / (DB_NAME + suffix)).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="corrupt or not an SQLite database") as err:
        RunStore(root)
    assert str(root / DB_NAME) in str(err.value)

    other = tmp_path / "other"
    other.mkdir()
    (other / DB_NAME).write_text("this is not a database, just text " * 100)
    with pytest.raises(StoreError, match="corrupt") as err:
        RunStore(other)
    assert str(other / DB_NAME) in str(err.value)


def test_unwritable_root_raises(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError) as err:
        RunStore(blocker / "runs")
    assert str(blocker / "runs") in str(err.value)
    with pytest.raises(StoreError, match="not a folder|in the way") as err:
        RunStore(blocker)
    assert str(blocker) in str(err.value)


def test_newer_schema_refused(tmp_path):
    root = tmp_path / "runs"
    RunStore(root).close()
    conn = sqlite3.connect(root / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer") as err:
        RunStore(root)
    assert str(root / DB_NAME) in str(err.value)


def test_recorder_batches_real_events_and_loses_nothing(store):
    rid = store.create_run(config())
    rec = StoreRecorder(store, rid, flush_every_s=3600, flush_every_steps=50)
    tx0 = store.transactions
    rec.on_start(StartEvent(config=config(), device="cpu", layer_names=[f"l{i}" for i in range(L)],
                            layer_kinds=["conv"] * L, layer_params=[10] * L, classes=["a", "b"],
                            train_size=10, val_size=2, test_size=2, total_steps=130, start_epoch=0))
    assert store.transactions == tx0 + 1
    n = 0
    for epoch, count in ((0, 70), (1, 60)):
        for _ in range(count):
            n += 1
            rec.on_step(StepEvent(step=n, total_steps=130, epoch=epoch, **{k: v for k, v in step_dict(n).items()
                                                                            if k not in ("step", "total_steps", "epoch")}))
        if epoch == 0:
            assert rec.flushes == 1 and rec.pending == 20  # one batch of 50 written, 20 buffered
            assert len(store.steps_since(rid)) == 50
            rec.on_epoch(EpochEvent(epoch=0, epochs=2, train_loss=1.0, train_acc=0.5, val_acc=0.6, test_acc=0.6,
                                    task_specific_layers_pct=40.0, additional_params_pct=4.0, active_layers=20,
                                    seconds=1.0))
            assert rec.flushes == 2 and rec.pending == 0
    assert rec.flushes == 3 and rec.pending == 10  # 120 steps of 130 written
    rec.close()
    assert rec.flushes == 4 and rec.pending == 0
    # start + 4 step batches + 1 epoch: 6 transactions for 130 steps
    assert store.transactions == tx0 + 6
    steps = store.steps_since(rid, with_scores=True)
    assert [d["step"] for d in steps] == list(range(1, 131))
    assert steps[-1]["epoch"] == 1 and steps[-1]["scores"] == pytest.approx(step_dict(130)["scores"], abs=1e-6)
    run = store.get_run(rid)
    assert run["last_step"] == 130 and run["layer_names"][0] == "l0" and run["heartbeat_at"] is not None
    assert store.epochs(rid)[0]["active_layers"] == 20

    # time-based flush
    rec2 = StoreRecorder(store, rid, flush_every_s=0.0, flush_every_steps=1000)
    rec2.on_step(StepEvent(**step_dict(131, epoch=1, total=200)))
    assert rec2.flushes == 1 and store.get_run(rid)["last_step"] == 131


def test_disk_full_raises_and_keeps_committed_data(store, monkeypatch):
    rid = store.create_run(config())
    conn = store.connection()
    real = conn.executemany
    calls = {"n": 0}

    def executemany(sql, rows):
        if "INTO steps" in sql:
            calls["n"] += 1
            if calls["n"] == 2:
                raise sqlite3.OperationalError("database or disk is full")
        return real(sql, rows)

    monkeypatch.setattr(conn, "executemany", executemany)
    rec = StoreRecorder(store, rid, flush_every_s=3600, flush_every_steps=10)
    for s in range(1, 11):
        rec.on_step(StepEvent(**step_dict(s, total=20)))
    with pytest.raises(StoreError, match="disk is full") as err:
        for s in range(11, 21):
            rec.on_step(StepEvent(**step_dict(s, total=20)))
    assert str(store.db_path) in str(err.value)
    assert rec.pending == 10  # the unwritten batch is kept for a retry
    assert [d["step"] for d in store.steps_since(rid)] == list(range(1, 11))
    assert store.scores_matrix(rid)[0] == list(range(1, 11))
    assert store.get_run(rid)["last_step"] == 10
    assert not conn.in_transaction
    # space is back: the kept batch goes through
    rec.close()
    assert [d["step"] for d in store.steps_since(rid)] == list(range(1, 21))

    # an OSError ENOSPC while writing a run's folder is a StoreError too
    import errno
    from pathlib import Path
    real_write = Path.write_text

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StoreError, match="disk is full"):
        store.create_run(config())
    monkeypatch.setattr(Path, "write_text", real_write)
    assert len(store.list_runs()) == 1
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == [rid]  # no half-made run folder


def test_threads_share_a_store_and_missing_runs_are_clear(store):
    import threading
    rid = store.create_run(config())
    errors = []

    def write(k):
        try:
            for i in range(1, 51):
                store.record_steps(rid, [step_dict(k * 100 + i)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [d["step"] for d in store.steps_since(rid)] == [k * 100 + i for k in range(4) for i in range(1, 51)]
    with pytest.raises(StoreError, match="no such run"):
        store.record_steps("r-missing", [step_dict(1)])
    with pytest.raises(StoreError, match="no run"):
        store.heartbeat("r-missing")


def test_a_thread_that_ended_leaves_its_connection_to_the_next(store):
    """Streamlit runs each script run (each poll of a watched run) in a new thread: the store must
    not open a connection, and keep its files open, for every one of them."""
    import threading

    import psutil

    rid = store.create_run(config())
    me = psutil.Process()
    used = []

    def poll():
        used.append(store.connection())
        assert store.get_run(rid)["id"] == rid

    def in_a_thread(target):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    in_a_thread(poll)
    files = me.num_fds()
    for _ in range(30):
        in_a_thread(poll)
    assert me.num_fds() == files  # 2 more a thread before
    assert len({id(c) for c in used}) == 1 and used[0] is not store.connection()  # not the live main thread's
    # Threads alive at the same time still have a connection each.
    together, barrier = [], threading.Barrier(3)

    def hold():
        together.append(store.connection())
        barrier.wait()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in together}) == 3


def test_a_version_1_store_is_migrated_and_keeps_its_runs(tmp_path):
    from workbench.store import MIGRATIONS

    root = tmp_path / "runs"
    root.mkdir()
    conn = sqlite3.connect(root / DB_NAME)
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO runs (id, status, config, created_at, method) VALUES "
                 "('r-old', 'done', '{\"lam\": 0.5}', 1.0, 'taps')")
    # Version 1 kept the config's λ for every run: a baseline's default, a budget run's unused one.
    old_runs = [("r-base", "finetune", {"lam": 0.3}, None),
                ("r-budget", "taps", {"lam": 0.3, "budget_pct": 25.0}, {"budget_pct": 25.0, "lam_final": 0.7}),
                ("r-path", "taps", {"lam": 0.3, "lam_path": [0.1, 1.0]}, None),
                ("r-joint", "taps", {"lam": 0.3, "tasks": ["a", "b"]}, None)]
    for run_id, method, cfg, metrics in old_runs:
        conn.execute("INSERT INTO runs (id, status, config, created_at, method, lam, metrics) VALUES "
                     "(?, 'done', ?, 2.0, ?, 0.3, ?)", (run_id, json.dumps(cfg), method, metrics and json.dumps(metrics)))
    conn.execute("INSERT INTO steps (run_id, step, loss) VALUES ('r-old', 1, 0.7)")
    conn.execute("INSERT INTO epochs (run_id, epoch, train_loss) VALUES ('r-old', 0, 2.0)")
    conn.commit()
    conn.close()
    store = RunStore(root)
    assert store.connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert {r["id"]: (r["kind"], r["lam"]) for r in store.list_runs()} == {
        "r-old": ("single", None), "r-base": ("single", None), "r-budget": ("budget", 0.7), "r-path": ("path", 0.3),
        "r-joint": ("joint", 0.3)}
    run = store.get_run("r-old")
    # Its flat (version 1) config comes back in today's nested form, the unsaid settings at their defaults.
    assert run["config"] == TrainConfig.from_flat(lam=0.5).to_dict() and run["config"]["version"] == 2
    assert run["config"]["sparsity"]["lam"] == 0.5 and run["tasks"] is None
    assert store.get_run("r-budget")["config"]["sparsity"]["budget_pct"] == 25.0
    assert store.get_run("r-joint")["config"]["data"]["tasks"] == ["a", "b"]
    assert [(s["step"], s["loss"], s["task_losses"]) for s in store.steps_since("r-old")] == [(1, 0.7, None)]
    assert [(e["epoch"], e["train_loss"], e["tasks"], e["warning"]) for e in store.epochs("r-old")] == \
        [(0, 2.0, None, None)]


def test_joint_runs_record_each_task_and_give_a_frontier_point_per_task(store):
    run_id = store.create_run(config(tasks=["fashion-mnist", "digits"]))
    assert store.get_run(run_id)["dataset"] == "fashion-mnist + digits"
    store.record_start(run_id, dict(layer_names=["a"], tasks=["fashion-mnist", "digits"], total_steps=2))
    store.record_steps(run_id, [dict(step_dict(1, scores=[0.2, 0.05]), task_losses=[1.5, 0.5])])
    per_task = {"fashion-mnist": dict(test_acc=0.8, val_acc=0.7, task_specific_layers_pct=100.0,
                                      additional_params_pct=50.0),
                "digits": dict(test_acc=0.9, val_acc=0.95, task_specific_layers_pct=0.0, additional_params_pct=3.0)}
    store.record_epoch(run_id, dict(epoch=0, epochs=1, test_acc=0.85, tasks=per_task))
    store.set_status(run_id, "running")
    store.finish(run_id, "done", metrics=dict(test_acc=0.85, tasks=per_task))
    assert store.get_run(run_id)["tasks"] == ["fashion-mnist", "digits"]
    assert store.steps_since(run_id)[0]["task_losses"] == [1.5, 0.5]
    assert store.epochs(run_id)[0]["tasks"] == per_task
    points = store.frontier()
    assert [(p["dataset"], p["kind"], p["method"], p["test_acc"], p["task_specific_layers_pct"]) for p in points] == [
        ("fashion-mnist", "joint_task", "taps", 0.8, 100.0), ("digits", "joint_task", "taps", 0.9, 0.0)]


def _recorded_after_each_step(store, steps_per_epoch: int) -> list[int]:
    rid = store.create_run(config())
    rec = StoreRecorder(store, rid, flush_every_s=3600, flush_every_steps=1000, flush_each_epoch=True)
    rec.on_start(StartEvent(config=config(), device="cpu", layer_names=["a", "b"], layer_kinds=["conv"] * 2,
                            layer_params=[10, 10], classes=["a", "b"], train_size=40, val_size=2, test_size=2,
                            total_steps=8, start_epoch=0, total_epochs=2, steps_per_epoch=steps_per_epoch))
    written = []
    for n in range(1, 9):
        rec.on_step(StepEvent(step=n, total_steps=8, epoch=(n - 1) // 4, loss=1.0, task_loss=1.0, penalty=0.0,
                              lam_now=0.3, lr=0.003, scores=[0.2, 0.05], active_layers=1, images_per_sec=10.0))
        written.append(len(store.steps_since(rid)))
    return written


def test_a_recorder_flushing_each_epoch_writes_at_the_epoch_end_the_engine_reports(store):
    """Workers flush at the last step of every epoch, before its checkpoint: where an epoch ends
    comes from the start event's steps_per_epoch, not from the store redoing the trainer's sums."""
    assert _recorded_after_each_step(store, 4) == [0, 0, 0, 4, 4, 4, 4, 8]
    assert _recorded_after_each_step(store, 0) == [0] * 8  # not reported: only the usual cadence
