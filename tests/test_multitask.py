"""Incremental multi-task inference: one base, several packs, any task by name, no interference."""
import copy

import pytest
import torch

import taps
from taps.inference import evaluate_on
from taps.method.multitask import MultiTaskModel
from taps.method.packs import PackError
from taps.training.trainer import TrainConfig, train
from tests.helpers import scramble, tiny_resnet


def _base():
    torch.manual_seed(123)
    return tiny_resnet(num_classes=5).eval()


def _pack(tmp_path, name, seed, num_classes, off_every):
    model = _base()
    if num_classes != 5:
        model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    taps.adapt(model)
    scramble(model, off_every=off_every, seed=seed)
    path = taps.save_pack(model.eval(), tmp_path / f"{name}.safetensors")
    return path, taps.merge(model).eval(), taps.summarize(model)


@pytest.fixture
def two_tasks(tmp_path):
    return {"a": _pack(tmp_path, "a", 1, 5, 2), "b": _pack(tmp_path, "b", 2, 3, 3)}


def test_each_task_computes_exactly_its_merged_model(two_tasks):
    mt = MultiTaskModel(_base())
    for name, (path, _, _) in two_tasks.items():
        mt.add_task(name, path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for _ in range(2):  # switching back and forth changes nothing
            for name, (_, merged, _) in two_tasks.items():
                assert torch.equal(mt(x, task=name), merged(x))
    assert mt(x, task="b").shape == (4, 3)


def test_adding_a_task_never_changes_another(two_tasks, tmp_path):
    mt = MultiTaskModel(_base())
    mt.add_task("a", two_tasks["a"][0])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = mt(x, task="a").clone()
        mt.add_task("b", two_tasks["b"][0])
        mt(x, task="b")
        mt.add_task("c", _pack(tmp_path, "c", 3, 5, 4)[0])
        mt(x, task="c")
        assert torch.equal(mt(x, task="a"), before)
        mt.remove_task("c")
        assert torch.equal(mt(x, task="a"), before)
    assert mt.tasks == ["a", "b"]


def test_switching_swaps_references_and_never_copies_the_base(two_tasks):
    base = _base()
    reference = copy.deepcopy(base)
    mt = MultiTaskModel(base)
    for name, (path, _, _) in two_tasks.items():
        mt.add_task(name, path)
    untouched = "conv1"  # layer 0: off in both tasks (scramble switches off every 2nd / 3rd from 0)
    pointer = dict(base.named_modules())[untouched].weight.data_ptr()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mt(x, task="a"), mt(x, task="b")
        assert dict(base.named_modules())[untouched].weight.data_ptr() == pointer
        mt._activate(None)  # the plain base again, bit for bit
        for (n, p), (_, q) in zip(base.state_dict().items(), reference.state_dict().items()):
            assert torch.equal(p, q), n


def test_report_counts_what_each_task_adds(two_tasks):
    mt = MultiTaskModel(_base())
    for name, (path, _, _) in two_tasks.items():
        mt.add_task(name, path)
    report = mt.report()
    for name, (path, _, stats) in two_tasks.items():
        assert report.tasks[name] == stats  # read off the pack = summarize() of the trained model
        assert report.pack_bytes[name] == path.stat().st_size
    assert report.parameter_multiplier == pytest.approx(taps.parameter_multiplier([s for _, _, s in two_tasks.values()]))
    base = _base()
    body = sum(v.numel() * v.element_size() for k, v in base.state_dict().items() if not k.startswith("fc."))
    heads = (512 * 5 + 5) * 4 + (512 * 3 + 3) * 4
    assert report.base_bytes == body and report.finetuned_bytes == 2 * body + heads
    assert report.total_bytes == body + sum(p.stat().st_size for p, _, _ in two_tasks.values())
    assert [r["task"] for r in report.rows()] == ["a", "b", "total"]


def test_a_pack_that_does_not_fit_is_refused_and_nothing_changes(two_tasks, tmp_path):
    import timm

    mt = MultiTaskModel(_base())
    mt.add_task("a", two_tasks["a"][0])
    other = timm.create_model("efficientnet_lite0", num_classes=3)
    taps.adapt(other)
    wrong_backbone = taps.save_pack(other, tmp_path / "lite.safetensors")
    with pytest.raises(PackError, match="efficientnet_lite0"):
        mt.add_task("lite", wrong_backbone)
    torch.manual_seed(999)
    other_base = tiny_resnet(num_classes=5)  # same architecture, other weights
    taps.adapt(other_base)
    foreign = taps.save_pack(other_base, tmp_path / "foreign.safetensors")
    with pytest.raises(PackError, match="base weights differ"):
        mt.add_task("foreign", foreign)
    assert mt.tasks == ["a"]
    with pytest.raises(KeyError, match="no task 'nope'"):
        mt(torch.randn(1, 3, 32, 32), task="nope")


@pytest.mark.slow
def test_two_offline_tasks_in_one_model_keep_their_single_task_accuracy(tmp_path):
    """Fashion-MNIST and digits trained independently on EfficientNet-Lite0, then served by one
    MultiTaskModel: each task's test accuracy equals its own run's, exactly."""
    runs = {}
    for dataset in ("fashion-mnist", "digits"):
        config = TrainConfig.from_flat(dataset=dataset, resolution=32, train_subset=200, eval_subset=100, epochs=1,
                             lam=1.0, score_lr=0.05, out_dir=str(tmp_path / dataset))
        runs[dataset] = train(config)
    mt = MultiTaskModel.from_packs({d: r.pack_path for d, r in runs.items()})
    for dataset, result in runs.items():
        got = evaluate_on(mt.task_model(dataset), mt.task_metadata(dataset), eval_subset=100)
        assert got["dataset"] == dataset and got["accuracy"] == result.metrics["test_acc"]
    report = mt.report()
    assert report.tasks["digits"].active_layers == runs["digits"].metrics["active_layers"]
    from taps.method.stats import TaskStats

    trained = [TaskStats(**{k: r.metrics[k] for k in TaskStats.__dataclass_fields__}) for r in runs.values()]
    assert report.parameter_multiplier == pytest.approx(taps.parameter_multiplier(trained))
