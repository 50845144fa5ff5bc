"""Bad input is refused with a message that names what is wrong, and nothing is launched, allocated
or lost: settings, datasets and image folders, task packs, and files that would unpickle code."""
from __future__ import annotations

import json
import logging
import math
import pathlib
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import taps
import taps.training.tasks
from taps.backbones import create_backbone
from taps.training.budget import LayerCosts
from taps.data import load_dataset
from taps.errors import (ConfigError, TrainingError, UnknownBackboneError, UnknownDatasetError,
                         WeightsUnavailableError)
from taps.training.trainer import CHECKPOINT, TrainConfig, train
from taps.training.preflight import preflight
from test_data import _png, _truncated_jpeg
from taps.method.layers import prime_gates
from tests.helpers import FAST_RUN, scramble, tiny_resnet
from workbench import worker
from workbench.launcher import Launcher
from workbench.store import RunStore

# (setting, bad value, what the message says): every numeric limit both ways, NaN and ∞.
BAD_SETTINGS = [
    ("lam", -1.0, "lam must be ≥ 0, got -1.0"),
    ("lam", math.nan, "lam must be a finite number, got nan"),
    ("lam", math.inf, "lam must be a finite number, got inf"),
    ("lr", -0.1, "lr must be > 0, got -0.1"),
    ("lr", 0.0, "lr must be > 0, got 0.0"),
    ("lr", math.nan, "lr must be a finite number, got nan"),
    ("epochs", -3, "epochs must be ≥ 1, got -3"),
    ("epochs", 0, "epochs must be ≥ 1, got 0"),
    ("epochs", math.nan, "epochs must be a finite number, got nan"),
    ("epochs", 2.5, "epochs must be a whole number, got 2.5"),
    ("resolution", 10_000, "resolution must be ≤ 1024, got 10000"),
    ("batch_size", 10**6, "batch_size must be ≤ 4096, got 1000000"),
    ("batch_size", 0, "batch_size must be ≥ 1, got 0"),
    ("train_subset", 10**12, "train_subset must be ≤ 100000000"),
    ("method", "lora", "unknown method 'lora'; choose one of taps, "),
]
UNKNOWN_NAMES = [
    ("backbone", "resnet5O", UnknownBackboneError, "unknown backbone 'resnet5O'.*resnet50"),
    ("dataset", "fashion-mnst", UnknownDatasetError, "Unknown dataset 'fashion-mnst'.*fashion-mnist"),
]


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs") as s:
        yield s


def _nothing_queued(store) -> None:
    assert store.list_runs() == []
    assert [p for p in store.root.iterdir() if p.is_dir()] == []  # not even a run folder


def _refused_everywhere(store, config: dict, error: type, message: str, sweep: bool = True) -> None:
    """The library's check, a launch and (unless the sweep sets that field itself) a sweep all
    refuse ``config``; nothing is queued."""
    with pytest.raises(error, match=message):
        preflight(TrainConfig.from_flat(**config))
    launcher = Launcher(store, max_concurrent=1)
    with pytest.raises(error, match=message):
        launcher.launch(config)
    if sweep:
        with pytest.raises(error, match=message):  # one bad run in a sweep: none of it is queued
            launcher.sweep(config, lams=[0.1, 1.0], baselines=True)
    _nothing_queued(store)


@pytest.mark.parametrize("name, value, message", BAD_SETTINGS, ids=[f"{n}={v}" for n, v, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_naming_the_field_before_anything_is_allocated(store, monkeypatch, name, value,
                                                                               message):
    config = dict(FAST_RUN, **{name: value})
    if name == "lam":  # a sweep sets λ itself: one bad λ among good ones stops all of it
        with pytest.raises(ConfigError, match=message):
            Launcher(store).sweep(FAST_RUN, lams=[0.1, value, 1.0])
    _refused_everywhere(store, config, ConfigError, message, sweep=name not in ("lam", "method"))

    def allocate(*args, **kwargs):
        raise AssertionError("bad settings reached data loading or model building")

    monkeypatch.setattr(taps.training.tasks, "load_dataset", allocate)
    monkeypatch.setattr(taps.training.tasks, "create_backbone", allocate)
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig.from_flat(**config))


@pytest.mark.parametrize("name, value, error, message", UNKNOWN_NAMES, ids=[n for n, *_ in UNKNOWN_NAMES])
def test_unknown_backbone_or_dataset_is_refused_with_the_close_match(store, name, value, error, message):
    _refused_everywhere(store, dict(FAST_RUN, **{name: value}), error, message)


# ------------------------------------------------------------------- image folders

def _two_classes(root: pathlib.Path) -> pathlib.Path:
    for c in ("cat", "dog"):
        for i in range(3):
            _png(root / c / f"{i}.png", "RGB")
    return root


@pytest.mark.parametrize("spoil, message", [
    (lambda root: (root / "fox").mkdir(), r"Class folder .*[/\\]fox has no images"),
    (lambda root: ((root / "fox").mkdir(), (root / "fox" / "a.jpg.txt").write_text("not an image")),
     r"Class folder .*[/\\]fox has no images \(looked for .bmp, .gif, .jpeg, .jpg"),
    (lambda root: [p.unlink() for p in root.rglob("*.png")] and None, r"[/\\]cat has no images"),
], ids=["empty-class", "class-of-text-files", "no-images-at-all"])
def test_a_folder_with_a_class_without_images_is_refused_before_queueing(store, tmp_path, spoil, message):
    root = _two_classes(tmp_path / "pets")
    spoil(root)
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(root)), ConfigError, message)


def test_a_folder_that_is_not_a_dataset_is_refused(store, tmp_path):
    (tmp_path / "loose").mkdir()
    _png(tmp_path / "loose" / "a.png", "RGB")  # images, but no class sub-folders
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(tmp_path / "loose")), ConfigError,
                        r"loose has no class sub-folders: expected <folder>/<class name>/<image files>")


def test_mixed_modes_and_broken_files_in_one_folder_train_as_rgb(store, tmp_path, caplog):
    """Grayscale, RGBA, palette and RGB images side by side, a truncated JPEG and a text file:
    a run is accepted and trains; the broken file is replaced by an image of its class."""
    root = tmp_path / "mixed"
    for c in ("cat", "dog"):
        for mode in ("L", "RGBA", "P", "RGB"):
            _png(root / c / f"{mode}.png", mode)
            _png(root / c / f"{mode}-2.png", mode)
        (root / c / "notes.txt").write_text("not an image")
    _truncated_jpeg(root / "cat" / "broken.jpg")
    config = dict(FAST_RUN, dataset=str(root), train_subset=None, eval_subset=None, batch_size=4)
    Launcher.validate(config)  # accepted for launching
    with caplog.at_level(logging.WARNING, logger="taps.data"):
        result = train(TrainConfig.from_flat(**config))
    assert result.status == "done" and len(result.history) == 2
    assert all(0.0 <= h["val_acc"] <= 1.0 and math.isfinite(h["train_loss"]) for h in result.history)
    assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------- files that would run code

class _Marker:
    """Unpickling this creates ``path``: what an attacker's payload would do with a shell."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture
def booby_trapped(tmp_path):
    """A weights file that unpickles a marker-file payload; the payload is shown to be live."""
    marker = tmp_path / "PAYLOAD-RAN"
    state = create_backbone(FAST_RUN["backbone"], 10, weights="none").state_dict()
    path = tmp_path / "weights.pt"
    torch.save({**state, "extra": _Marker(marker)}, path)
    torch.load(path, weights_only=False)  # an unsafe load runs it…
    assert marker.exists()
    marker.unlink()  # …the loads under test must not
    return path, marker


def test_a_checkpoint_that_would_unpickle_code_is_refused_as_backbone_weights(booby_trapped):
    path, marker = booby_trapped
    with pytest.raises(WeightsUnavailableError, match=f"refused to load {path} for safety"):
        create_backbone(FAST_RUN["backbone"], 10, checkpoint=path)
    assert not marker.exists()


def test_a_run_checkpoint_that_would_unpickle_code_fails_the_run_and_runs_nothing(store, booby_trapped):
    path, marker = booby_trapped
    run_id = store.create_run(TrainConfig.from_flat(**FAST_RUN).to_dict())
    store.run_dir(run_id).joinpath(CHECKPOINT).write_bytes(path.read_bytes())  # the worker resumes from it
    assert worker.run(store, run_id) == 1
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith(f"refused to resume from {store.run_dir(run_id) / CHECKPOINT} for safety")
    assert not marker.exists()


def test_a_pickle_passed_off_as_a_task_pack_is_refused(tmp_path):
    marker = tmp_path / "PAYLOAD-RAN"
    path = tmp_path / "task.safetensors"
    path.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(taps.PackError, match=f"{path} is not a readable safetensors task pack"):
        taps.read_pack(path)
    assert not marker.exists()


# ------------------------------------------------------------------- the gate at τ

def test_a_score_exactly_at_tau_is_on_in_the_layer_the_budget_and_the_trainer_alike():
    """τ = 0.7 is 0.69999999 in float32: a score set to τ sits exactly at the threshold, where a
    float32 and a float64 comparison disagree. Every place that decides the gate says on."""
    model = taps.adapt(tiny_resnet(), taps.TAPSConfig(threshold=0.7, score_init=0.7))
    layers = [m for _, m in taps.gated_layers(model)]
    scores = torch.stack([m.score.detach() for m in layers]).tolist()  # as the trainer reads them
    everything_on = [True] * len(layers)
    assert [m.active for m in layers] == everything_on
    assert LayerCosts(model, "layers").active(scores) == everything_on
    prime_gates(layers, scores)  # the trainer's per-step read of the gates
    assert [m.active for m in layers] == everything_on
    assert taps.summarize(model).active_layers == len(layers)


# ------------------------------------------------------------------- tensors read from files

def _saved_pack(tmp_path) -> tuple[pathlib.Path, torch.nn.Module]:
    model = taps.adapt(tiny_resnet())
    scramble(model)
    return taps.save_pack(model, tmp_path / "task.safetensors", class_names=list("abcde")), model


def _rewritten_pack(path: pathlib.Path, change) -> pathlib.Path:
    """The pack at ``path`` with ``change(tensors, metadata)`` applied, written back in place:
    what a damaged or hand-edited pack holds."""
    pack = taps.read_pack(path)
    tensors, meta = dict(pack.tensors), json.loads(json.dumps(pack.metadata))
    change(tensors, meta)
    save_file(tensors, str(path), metadata={"taps": json.dumps(meta)})
    return path


def _first_delta(tensors) -> str:
    return next(k for k in tensors if k.startswith("delta."))


def _nan_in_first_delta(tensors, meta):
    name = _first_delta(tensors)
    tensors[name] = tensors[name].clone().view(-1).index_fill_(0, torch.tensor([3]), math.nan).view_as(tensors[name])


def _first_delta_one_column_wider(tensors, meta):
    name = _first_delta(tensors)
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)


@pytest.mark.parametrize("change, message", [
    (_nan_in_first_delta, r"tensor 'delta\.layer1\.0\.conv1' holds 1 NaN or infinite value\(s\) of 36864"),
    (_first_delta_one_column_wider,
     r"tensor 'delta\.layer1\.0\.conv1' has shape \(64, 64, 3, 4\), expected \(64, 64, 3, 3\)"),
], ids=["nan-in-a-delta", "delta-of-another-shape"])
def test_a_pack_with_a_bad_tensor_is_refused_naming_the_file_and_the_tensor(tmp_path, change, message):
    path, _ = _saved_pack(tmp_path)
    _rewritten_pack(path, change)
    where = re.escape(str(path))
    with pytest.raises(taps.PackError, match=f"^{where}: {message}$"):
        taps.read_pack(path)
    fresh = tiny_resnet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(taps.PackError, match=f"^{where}: {message}$"):
        taps.load_pack(fresh, path, check_base=False)
    assert not taps.gated_layers(fresh) and all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_a_delta_of_another_shape_names_both_shapes_even_past_the_reader(tmp_path):
    """A TaskPack built in memory skips read_pack: the fit check itself prints the two shapes."""
    path, model = _saved_pack(tmp_path)
    pack = taps.read_pack(path)
    _first_delta_one_column_wider(pack.tensors, pack.metadata)
    with pytest.raises(taps.PackError, match=re.escape(
            "the delta of layer 'layer1.0.conv1' has shape (64, 64, 3, 4), the layer (64, 64, 3, 3)")):
        taps.load_pack(model, pack)


def test_backbone_weights_with_nan_are_refused_naming_the_file_and_the_tensor(tmp_path):
    state = create_backbone(FAST_RUN["backbone"], 10, weights="none").state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], math.inf)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError, match=re.escape(
            f"checkpoint {path}: tensor {name!r} holds {state[name].numel()} NaN or infinite value(s)")):
        create_backbone(FAST_RUN["backbone"], 10, checkpoint=path)


def test_a_run_checkpoint_with_nan_fails_the_resume_naming_the_file_and_the_tensor(tmp_path):
    config = TrainConfig.from_flat(**dict(FAST_RUN, epochs=1, out_dir=str(tmp_path / "run")))
    train(config)
    path = tmp_path / "run" / CHECKPOINT
    ckpt = torch.load(path, weights_only=True)
    name = next(k for k in ckpt["model"] if k.endswith(".delta"))
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], math.nan)
    torch.save(ckpt, path)
    with pytest.raises(TrainingError, match=re.escape(
            f"{path}: tensor {name!r} holds {ckpt['model'][name].numel()} NaN or infinite value(s)")):
        train(config, resume=True)


# ------------------------------------------------------------------- what an image folder must be

def _folder(root: pathlib.Path, images_per_class: dict[str, int]) -> pathlib.Path:
    for c, n in images_per_class.items():
        for i in range(n):
            _png(root / c / f"{i}.png", "RGB")
    return root


def test_a_folder_with_one_class_is_refused_before_queueing(store, tmp_path):
    root = _folder(tmp_path / "only-cats", {"cat": 6})
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(root), train_subset=None), ConfigError,
                        re.escape("only-cats has 1 class ('cat'); a classification task needs at least two classes."))


def test_a_class_without_an_image_in_val_or_test_is_refused_before_queueing(store, tmp_path):
    """Two images a class: one is carved for test, one stays for train, none is left for val."""
    root = _folder(tmp_path / "pairs", {"cat": 2, "dog": 2})
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(root), train_subset=None), ConfigError, re.escape(
        "pairs: class(es) 'cat', 'dog' have no image in the val split; every class needs at least one image in "
        "train, val and test (carving val and test from train takes at least 3 images a class)."))


def test_more_training_images_than_exist_is_refused_naming_how_many_there_are(store, tmp_path):
    root = _folder(tmp_path / "pets", {"cat": 10, "dog": 10})  # 2 test and 1 val carved a class: 14 left
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(root), train_subset=15), ConfigError, re.escape(
        "train_subset must be ≤ 14, got 15: pets has 14 training images once val and test are carved out "
        "(leave it unset to use them all)."))
    _refused_everywhere(store, dict(FAST_RUN, train_subset=5000), ConfigError,
                        re.escape("train_subset must be ≤ 1293, got 5000: digits has 1293 training images"))
    assert len(load_dataset(root, train_subset=14).train) == 14  # the largest that can be met is accepted


def test_a_link_back_up_in_a_class_folder_is_not_followed(tmp_path, caplog):
    """``a/up -> ..`` used to be walked some forty levels deep: 3 + 3 images loaded as 176 / 20 / 50,
    with class b's images counted as class a's."""
    root = _folder(tmp_path / "ab", {"a": 3, "b": 3})
    (root / "a" / "up").symlink_to("..")
    with caplog.at_level(logging.WARNING, logger="taps.data"):
        splits = load_dataset(root, resolution=16)
    for split in (splits.train, splits.val, splits.test):
        assert np.bincount(split.targets).tolist() == [1, 1]
        files = [split.reader.name(int(i)) for i in split.indices]
        assert [pathlib.Path(f).parent.name for f in files] == ["a", "b"]  # each image in its own class folder
    assert f"{root / 'a'}: skipped 1 link(s) leading out of the class folder: {root / 'a' / 'up'}" in caplog.text


def test_links_to_another_class_or_out_of_the_dataset_are_refused(store, tmp_path):
    outside = _folder(tmp_path / "elsewhere", {"secrets": 3})
    root = _folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    (root / "fox").symlink_to(root / "dog")  # a class made of another class's images
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(root), train_subset=None), ConfigError,
                        re.escape(f"{root / 'dog'} and {root / 'fox'} are the same folder ({root / 'dog'})"))
    (root / "fox").unlink()
    (root / "fox").symlink_to(outside / "secrets")
    _refused_everywhere(store, dict(FAST_RUN, dataset=str(root), train_subset=None), ConfigError, re.escape(
        f"{root / 'fox'} is a link to {outside / 'secrets'}, outside the dataset folder {root}; "
        "links are not followed out of the dataset folder."))
    (root / "fox").unlink()
    (root / "cat" / "stolen.png").symlink_to(outside / "secrets" / "0.png")  # one file, out of the dataset
    assert np.bincount(load_dataset(root, resolution=16).train.targets).tolist() == [1, 1]


# ------------------------------------------------------------------- targets that cannot be met

@pytest.mark.parametrize("backbone, dataset, least, cost", [
    ("efficientnet_lite0", "fashion-mnist", "2.88", "2.873"),  # the case: the floor is 2.87 %
    ("test_resnet", "digits", "1.38", "1.376"),
])
def test_a_parameter_budget_below_what_norms_and_head_cost_is_refused_naming_the_least(store, monkeypatch, backbone,
                                                                                      dataset, least, cost):
    config = dict(FAST_RUN, backbone=backbone, dataset=dataset, budget_pct=1.0, budget_kind="params")
    message = re.escape(f"budget_pct must be ≥ {least} for a params budget, got 1.0: norms and head of {backbone} "
                        f"with 10 classes already cost {cost} %")
    _refused_everywhere(store, config, ConfigError, message, sweep=False)
    with pytest.raises(ConfigError, match=message):  # and by train itself, before a step is taken
        train(TrainConfig.from_flat(**config))
    preflight(TrainConfig.from_flat(**dict(config, budget_pct=float(least))))  # the least is accepted


def test_a_lam_path_that_does_not_increase_is_refused_naming_the_step(store):
    _refused_everywhere(store, dict(FAST_RUN, lam_path=[0.1, 1.0, 1.0]), ConfigError, re.escape(
        "lam_path must increase (each stage prunes further): λ #3 must be > 1.0, got 1.0"), sweep=False)
