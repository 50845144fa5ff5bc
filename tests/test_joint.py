"""Joint multi-task TAPS (Eq. 4) and its memory-efficient variant, on the two offline tasks."""
import math

import pytest
import torch
from safetensors.torch import load_file

from taps.backbones import create_backbone
from taps.inference import evaluate_on
from taps.training.joint import BASE, train_memory_efficient
from taps.method.multitask import MultiTaskModel
from taps.method.packs import read_pack
from taps.training.trainer import CHECKPOINT, TrainConfig, train
from taps.training.preflight import preflight
from tests.helpers import FAST_RUN, Recorder

TASKS = ["fashion-mnist", "digits"]
TINY = dict(resolution=32, train_subset=200, eval_subset=100, epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint")
    rec = Recorder()
    # Fast scores and no warm-up: in six steps λ=1 already switches layers off.
    result = train(TrainConfig.from_flat(**TINY, tasks=TASKS, lam=1.0, score_lr=0.5, penalty_warmup=0.0, out_dir=str(out)),
                   [rec])
    return result, rec, out


def test_joint_run_records_every_task(joint_run):
    result, rec, _ = joint_run
    assert rec.start.tasks == TASKS and len(rec.start.layer_names) == 49
    assert [e.step for e in rec.steps] == list(range(1, rec.start.total_steps + 1))
    for e in rec.steps:
        assert len(e.task_losses) == 2 and len(e.scores) == 2 * 49  # both tasks' scores, task after task
        assert math.isclose(e.task_loss, sum(e.task_losses), rel_tol=1e-6)
        assert math.isclose(e.loss, e.task_loss + e.penalty, rel_tol=1e-5)
    (epoch,) = rec.epochs
    assert set(epoch.tasks) == set(TASKS)
    assert epoch.test_acc == pytest.approx(sum(epoch.tasks[t]["test_acc"] for t in TASKS) / 2)
    assert result.metrics["tasks"] == epoch.tasks
    assert rec.steps[-1].active_layers == sum(epoch.tasks[t]["active_layers"] for t in TASKS)
    # A frontier point per task, at the run's λ, with that task's own numbers.
    assert [(p["kind"], p["dataset"], p["lam"], p["test_acc"], p["task_specific_layers_pct"])
            for p in result.metrics["points"]] == [
        ("joint_task", t, 1.0, epoch.tasks[t]["test_acc"], epoch.tasks[t]["task_specific_layers_pct"]) for t in TASKS]


def test_joint_run_trains_the_shared_base_and_its_packs_serve_each_task_exactly(joint_run):
    result, _, out = joint_run
    assert set(result.task_packs) == set(TASKS) and result.base_path == str(out / BASE)
    pretrained = create_backbone("efficientnet_lite0", 10)
    trained = create_backbone("efficientnet_lite0", 10, checkpoint=result.base_path)
    changed = [n for (n, a), (_, b) in zip(pretrained.state_dict().items(), trained.state_dict().items())
               if not n.startswith("classifier") and a.is_floating_point() and not torch.equal(a, b)]
    assert changed and all(n.endswith(("weight", "bias")) and "bn" not in n for n in changed)
    assert trained.pretrained_cfg["mean"] == pretrained.pretrained_cfg["mean"]  # TF-style Lite semantics kept

    mt = MultiTaskModel.from_packs(result.task_packs)  # finds the joint base beside the packs
    for task in TASKS:
        assert read_pack(result.task_packs[task]).metadata["extra"]["dataset"] == task
        got = evaluate_on(mt.task_model(task), mt.task_metadata(task), eval_subset=100)
        assert got["accuracy"] == result.metrics["tasks"][task]["test_acc"]
        assert mt.report().tasks[task].active_layers == result.metrics["tasks"][task]["active_layers"]


def test_memory_efficient_variant_serves_its_tasks_from_one_base(tmp_path):
    results = train_memory_efficient(TrainConfig.from_flat(**TINY, tasks=TASKS, lam=1.0, out_dir=str(tmp_path)))
    joint = results["joint"]
    assert all(m["active_layers"] == 0 for m in joint.metrics["tasks"].values())  # fine-tuned base, no deltas
    mt = MultiTaskModel.from_packs({t: results[t].pack_path for t in TASKS}, checkpoint=joint.base_path)
    for task in TASKS:
        got = evaluate_on(mt.task_model(task), mt.task_metadata(task), eval_subset=100)
        assert got["accuracy"] == results[task].metrics["test_acc"]


def test_joint_settings_are_checked():
    from taps.errors import ConfigError

    with pytest.raises(ConfigError, match="at least two different datasets"):
        TrainConfig.from_flat(tasks=["digits"]).validate()
    with pytest.raises(ConfigError, match="at least two different datasets"):
        TrainConfig.from_flat(tasks=["digits", "digits"]).validate()
    with pytest.raises(ConfigError, match="not 'bn_only'"):
        TrainConfig.from_flat(tasks=TASKS, method="bn_only").validate()
    from taps.errors import UnknownDatasetError

    with pytest.raises(UnknownDatasetError):
        preflight(TrainConfig.from_flat(tasks=["digits", "no-such-data"]))


# A joint run in seconds: the 0.4 M-parameter test_resnet from random weights, 4 steps an epoch.
FAST_JOINT = dict(FAST_RUN, tasks=TASKS, lam=1.0, score_lr=0.05, epochs=2)


def _pack_tensors(result) -> dict[str, dict[str, torch.Tensor]]:
    paths = {"base": result.base_path, **result.task_packs}
    return {name: load_file(path) for name, path in paths.items()}


def _timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def uninterrupted_joint_run(tmp_path_factory):
    return train(TrainConfig.from_flat(**FAST_JOINT, out_dir=str(tmp_path_factory.mktemp("uninterrupted"))))


class _CrashAtStep:
    """A callback that fails at one step, as a killed or crashing worker would stop there."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, e):
        if e.step == self.step:
            raise RuntimeError("worker crashed")


@pytest.mark.parametrize("stop", ["cancelled", "crashed"])
def test_joint_run_stopped_mid_way_resumes_to_where_an_uninterrupted_run_ends(tmp_path, uninterrupted_joint_run,
                                                                             stop):
    reference = uninterrupted_joint_run
    config = TrainConfig.from_flat(**FAST_JOINT, out_dir=str(tmp_path))
    steps_per_epoch = FAST_RUN["train_subset"] // FAST_RUN["batch_size"]
    stop_at = steps_per_epoch + 2  # half-way through the second epoch
    if stop == "cancelled":
        rec = Recorder()
        stopped = train(config, [rec], should_stop=lambda: len(rec.steps) >= stop_at)
        assert stopped.status == "cancelled" and not stopped.task_packs
    else:
        with pytest.raises(RuntimeError, match="worker crashed"):
            train(config, [_CrashAtStep(stop_at)])
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 0
    assert not (tmp_path / BASE).exists()

    rec = Recorder()
    resumed = train(config, [rec], resume=True)
    assert rec.start.start_epoch == 1 and [e.step for e in rec.steps][0] == steps_per_epoch + 1
    assert _timeless(resumed.history) == _timeless(reference.history)
    assert resumed.metrics == reference.metrics and resumed.layer_report == reference.layer_report
    got, want = _pack_tensors(resumed), _pack_tensors(reference)
    assert got.keys() == want.keys()
    for name in want:  # the base and every task's pack, bit for bit
        assert got[name].keys() == want[name].keys()
        assert all(torch.equal(got[name][k], want[name][k]) for k in want[name]), name


def test_joint_run_under_float16_scales_its_losses(monkeypatch):
    """The float16 path taken on older GPUs, exercised here on the CPU: every task's loss is
    scaled before its backward pass and the step unscales the summed gradients, so the run
    trains as in full precision (without the unscaling its steps would be 2¹⁶ times too large)."""
    import taps.training.trainer as trainer_module

    config = dict(FAST_JOINT, epochs=1, train_subset=32)  # 2 steps
    full = train(TrainConfig.from_flat(**config))
    scalers = []

    class RecordingScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaled, self.steps = 0, 0
            scalers.append(self)

        def scale(self, outputs):
            self.scaled += 1
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            self.steps += 1
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "mixed_precision_dtype", lambda device, enabled: torch.float16)
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    half = train(TrainConfig.from_flat(**config))
    (scaler,) = scalers
    assert scaler.is_enabled() and (scaler.scaled, scaler.steps) == (2 * len(TASKS), 2)  # each task, each step
    # float16 keeps ~3 significant digits: the same run, to within that precision.
    assert half.history[0]["train_loss"] == pytest.approx(full.history[0]["train_loss"], rel=0.02)
