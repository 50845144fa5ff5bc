"""The trainer on real offline data: events, packs, resume, cancel and clear errors."""
import io
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import taps
from taps.errors import ConfigError, DatasetUnavailableError, TrainingError, UnknownBackboneError, UnknownDatasetError
from taps.inference import evaluate_pack
from taps.training.trainer import TrainConfig, train
from taps.training.preflight import preflight
from tests.helpers import FAST_RUN, Recorder
from speed import patience

# Fashion-MNIST: these tests classify its images by name (the default task is hanzi).
TINY = dict(dataset="fashion-mnist", resolution=32, train_subset=160, eval_subset=100, batch_size=16, epochs=2,
            lr=0.02)


def test_events_metrics_and_pack_agree(tmp_path):
    rec = Recorder()
    result = train(TrainConfig.from_flat(**TINY, lam=1.0, out_dir=str(tmp_path)), [rec])
    steps_per_epoch = 160 // 16
    assert [e.step for e in rec.steps] == list(range(1, 2 * steps_per_epoch + 1))
    assert rec.start.total_steps == 2 * steps_per_epoch and len(rec.start.layer_names) == 49
    assert all(len(e.scores) == 49 for e in rec.steps)
    assert all(math.isclose(e.loss, e.task_loss + e.penalty, rel_tol=1e-5) for e in rec.steps)
    assert rec.steps[0].penalty < rec.steps[-1].penalty  # the warm-up ramp
    assert [e.epoch for e in rec.epochs] == [0, 1]
    last = rec.epochs[-1]
    assert result.metrics["test_acc"] == last.test_acc and result.metrics["val_acc"] == last.val_acc
    assert result.metrics["active_layers"] == sum(r["active"] for r in result.layer_report)
    assert result.metrics["active_layers"] == rec.steps[-1].active_layers
    # The pack alone (base weights + pack) reproduces the run's test accuracy.
    again = evaluate_pack(result.pack_path, eval_subset=100)
    assert again["images"] == rec.start.test_size and again["accuracy"] == pytest.approx(last.test_acc)
    meta = taps.read_pack(result.pack_path).metadata
    assert meta["backbone"] == "efficientnet_lite0" and meta["lam"] == 1.0
    assert meta["class_names"][0] == "T-shirt/top" and meta["extra"]["method"] == "taps"


def test_classify_an_image_file_as_the_test_split_does(tmp_path):
    """An image from outside (an upload) goes through the same preprocessing as the test split:
    classify() on PNG files gives the probabilities of the evaluation path on the same images."""
    from taps.data import decode_image, load_dataset
    from taps.inference import classify, load_task_model
    from taps.training.trainer import Normalize
    from taps.backbones import input_normalization

    result = train(TrainConfig.from_flat(**{**TINY, "epochs": 1}, out_dir=str(tmp_path)))
    model, pack = load_task_model(result.pack_path)
    raw = load_dataset("fashion-mnist", resolution=28, test_subset=20, mean=(0, 0, 0), std=(1, 1, 1))
    test = load_dataset("fashion-mnist", resolution=32, test_subset=20, mean=(0, 0, 0), std=(1, 1, 1)).test
    images = []
    for k in range(8):
        buf = io.BytesIO()
        Image.fromarray((raw.test[k][0][0].numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
        images.append(decode_image(buf.getvalue()))
    top = classify(model, pack, images, top_k=3)
    with torch.no_grad():
        x = torch.stack([test[k][0] for k in range(8)])
        probs = model(Normalize(*input_normalization(model))(x)).softmax(1)
    names = pack.metadata["class_names"]
    for k in range(8):
        assert len(top[k]) == 3 and top[k][0][1] >= top[k][1][1] >= top[k][2][1]
        assert top[k][0][0] == names[int(probs[k].argmax())]
        assert top[k][0][1] == pytest.approx(float(probs[k].max()), abs=0.02)  # resize rounding only


def test_seeded_cpu_runs_are_deterministic():
    a = train(TrainConfig.from_flat(**{**TINY, "epochs": 1}, seed=3))
    b = train(TrainConfig.from_flat(**{**TINY, "epochs": 1}, seed=3))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.layer_report == b.layer_report


def test_resume_after_kill_ends_like_an_uninterrupted_run(tmp_path):
    config = dict(TINY, epochs=3, lam=1.0)
    reference = train(TrainConfig.from_flat(**config, out_dir=str(tmp_path / "reference")))

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "taps", "train", "--out-dir", str(out)]
    for key, value in config.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    worker = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + patience(120)
    while not ckpt.exists() and worker.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    epoch_done = torch.load(ckpt, weights_only=True)["epoch"]
    assert epoch_done < 2, "the worker finished before it could be killed"
    assert not (out / "task.safetensors").exists()

    rec = Recorder()
    resumed = train(TrainConfig.from_flat(**config, out_dir=str(out)), [rec], resume=True)
    assert rec.start.start_epoch == epoch_done + 1
    assert [e.epoch for e in rec.epochs] == list(range(epoch_done + 1, 3))
    timeless = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert timeless(resumed.history) == timeless(reference.history)
    assert resumed.metrics["test_acc"] == reference.metrics["test_acc"]
    assert resumed.layer_report == reference.layer_report


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    train(TrainConfig.from_flat(**{**TINY, "epochs": 1}, out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="different settings"):
        train(TrainConfig.from_flat(**{**TINY, "epochs": 1, "lam": 5.0}, out_dir=str(tmp_path)), resume=True)


def test_cancel_stops_within_a_step_and_keeps_the_last_checkpoint(tmp_path):
    rec = Recorder()
    steps_per_epoch = 10
    result = train(TrainConfig.from_flat(**TINY, out_dir=str(tmp_path)), [rec],
                   should_stop=lambda: len(rec.steps) >= steps_per_epoch + 3)
    assert result.status == "cancelled" and len(rec.steps) == steps_per_epoch + 3
    assert result.epochs_done == 1 and result.pack_path is None
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 0


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import taps.training.trainer as trainer_module

    real = trainer_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 12 else loss

    monkeypatch.setattr(trainer_module.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 13 \(epoch 2\).*checkpoint"):
        train(TrainConfig.from_flat(**TINY, out_dir=str(tmp_path)))
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("change, error, message", [
    ({"lam": -0.5}, ConfigError, "lam must be ≥ 0"),
    ({"lam": float("nan")}, ConfigError, "lam must be a finite number"),
    ({"lr": 0.0}, ConfigError, "lr must be > 0"),
    ({"epochs": 0}, ConfigError, "epochs must be ≥ 1"),
    ({"resolution": 10_000}, ConfigError, "resolution must be ≤ 1024"),
    ({"batch_size": 10**6}, ConfigError, "batch_size must be ≤ 4096"),
    ({"method": "lora"}, ConfigError, "unknown method 'lora'"),
    ({"backbone": "resnet5O"}, UnknownBackboneError, "resnet50"),
    ({"dataset": "fashion-mnst"}, UnknownDatasetError, "fashion-mnist"),
])
def test_bad_settings_fail_clearly_before_training(change, error, message):
    with pytest.raises(error, match=message):
        preflight(TrainConfig.from_flat(**{**TINY, **change}))  # what a launcher checks before queueing
    rec = Recorder()
    with pytest.raises(error, match=message):
        train(TrainConfig.from_flat(**{**TINY, **change}), [rec])
    assert not rec.steps


def test_missing_dataset_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="(?i)how to get it"):
        preflight(TrainConfig.from_flat(**{**TINY, "dataset": "flowers102"}, data_root=str(tmp_path)))
    with pytest.raises(DatasetUnavailableError, match="(?i)flowers"):
        train(TrainConfig.from_flat(**{**TINY, "dataset": "flowers102"}, data_root=str(tmp_path)))


def test_corrupt_image_in_a_folder_is_substituted_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            shade = 40 if cls == "cats" else 210
            pixels = np.clip(rng.normal(shade, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = train(TrainConfig.from_flat(dataset=str(tmp_path), resolution=32, train_subset=None, eval_subset=None,
                               batch_size=8, epochs=1, lr=0.02))
    assert result.status == "done"
    assert "broken.jpg" in caplog.text


def test_cli_reports_bad_input_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "taps", "train", "--lam", "-1"],
                          capture_output=True, text=True, timeout=patience(120))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: lam must be ≥ 0, got -1.0"


def test_gpu_mixed_precision_path_runs_on_cpu(monkeypatch):
    """The autocast + channels_last path taken on GPUs, exercised here with CPU bfloat16."""
    import taps.training.trainer as trainer_module

    config = dict(TINY, epochs=1, train_subset=64)
    full = train(TrainConfig.from_flat(**config))
    monkeypatch.setattr(trainer_module, "mixed_precision_dtype", lambda device, enabled: torch.bfloat16)
    mixed = train(TrainConfig.from_flat(**config))
    assert mixed.status == "done"
    # bfloat16 keeps ~3 significant digits: the same run, to within that precision.
    assert mixed.history[0]["train_loss"] == pytest.approx(full.history[0]["train_loss"], rel=0.05)


def test_cli_train_then_eval_reports_the_same_accuracy(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "taps", "train", "--out-dir", str(out), "--epochs", "1"]
    for key, value in TINY.items():
        if key != "epochs":
            args += [f"--{key.replace('_', '-')}", str(value)]
    trained = subprocess.run(args, capture_output=True, text=True, timeout=patience(300))
    assert trained.returncode == 0, trained.stderr
    table = _cli_table(trained.stdout)
    pack = out / "task.safetensors"
    assert table["task pack"] == str(pack)
    evaluated = subprocess.run([sys.executable, "-m", "taps", "eval", str(pack), "--eval-subset", "100"],
                               capture_output=True, text=True, timeout=patience(300))
    assert evaluated.returncode == 0, evaluated.stderr
    rows = _cli_table(evaluated.stdout)
    assert rows["dataset"] == "fashion-mnist" and rows["split"] == "test" and rows["images"] == "100"
    assert float(rows["accuracy"]) == pytest.approx(float(table["test accuracy"]), abs=1e-4)


def _cli_table(stdout: str) -> dict[str, str]:
    """The CLI's two-column table: a label, two or more spaces, a value."""
    import re

    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in stdout.splitlines() if "  " in line)


def test_cli_list_flags_take_several_values():
    """--tasks, --include and --exclude are lists: `--tasks a b` means both (it used to keep one)."""
    import argparse

    from taps.cli import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--tasks", "fashion-mnist", "digits", "--exclude", "conv_stem", "blocks.0.*"])
    assert args.tasks == ["fashion-mnist", "digits"] and args.exclude == ["conv_stem", "blocks.0.*"]
    assert parser.parse_args([]).tasks == []


def test_frozen_gates_skip_unwanted_gradients_without_changing_the_run(monkeypatch):
    """After the gate freeze the scores take no gradient (off layers then skip their weight
    gradient): the run is the very run it was when those gradients were computed and unused."""
    import taps.training.trainer as trainer

    config = TrainConfig.from_flat(**FAST_RUN, lam=3.0, score_lr=0.05, penalty_mode="params", gate_freeze=0.5,
                         penalty_warmup=0.1)
    learning, real = [], trainer.set_gates_learning
    monkeypatch.setattr(trainer, "set_gates_learning", lambda scores, on: (learning.append(on), real(scores, on)))
    fast_events = Recorder()
    fast = train(config, [fast_events])
    assert learning == [True] * 4 + [False] * 4  # 8 steps, gates frozen after ceil(0.5·8)
    assert 0 < fast_events.steps[3].active_layers < len(fast_events.start.layer_names)  # some off, some on

    monkeypatch.setattr(trainer, "set_gates_learning", lambda scores, on: None)  # every gradient, always
    slow_events = Recorder()
    slow = train(config, [slow_events])
    assert [e.loss for e in fast_events.steps] == [e.loss for e in slow_events.steps]
    assert [e.scores for e in fast_events.steps] == [e.scores for e in slow_events.steps]
    assert fast.metrics == slow.metrics
