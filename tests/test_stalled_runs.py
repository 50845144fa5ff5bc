"""A run whose training loss is still at chance after its first epoch says so: in its events,
its log, the run store and on the Runs page (a user's own harder task must not fail silently)."""
import logging
import math

from app_testing import app
from taps.training.trainer import TrainConfig, train
from tests.helpers import FAST_RUN, Recorder
from workbench.store import RunStore, StoreRecorder

RUNS = "app_pages/runs.py"


def test_a_run_that_does_not_learn_warns_after_its_first_epoch(tmp_path, caplog):
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(TrainConfig.from_flat(**FAST_RUN).to_dict())
    events = Recorder()
    with caplog.at_level(logging.WARNING, logger="taps.training.trainer"), StoreRecorder(store, run_id) as recorder:
        # A learning rate far too small: the zero-initialised head keeps the loss at ln 10.
        result = train(TrainConfig.from_flat(**dict(FAST_RUN, lr=1e-9)), [events, recorder])
    first, second = result.history
    assert abs(first["train_loss"] - math.log(10)) < 1e-3
    assert first["warning"].startswith(f"training loss {first['train_loss']:.3f} at the end of the first epoch "
                                       "is still at chance (ln 10 = 2.303)")
    assert second["warning"] is None  # said once, after the first epoch
    assert [r.getMessage() for r in caplog.records if r.name == "taps.training.trainer"] == [first["warning"]]
    assert [e["warning"] for e in store.epochs(run_id)] == [first["warning"], None]


def test_the_runs_page_shows_the_warning(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    run_id = store.create_run(TrainConfig.from_flat(**FAST_RUN).to_dict())
    message = "training loss 2.301 at the end of the first epoch is still at chance (ln 10 = 2.303): …"
    store.record_epoch(run_id, dict(epoch=0, epochs=2, train_loss=2.301, warning=message))
    store.record_epoch(run_id, dict(epoch=1, epochs=2, train_loss=1.5))
    store.finish(run_id, "failed", error="stopped")
    at = app(tmp_path, monkeypatch, RUNS, query={"run": run_id})
    assert [w.value for w in at.warning] == [f"Epoch 1: {message}"]
