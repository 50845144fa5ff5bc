"""The hanzi task (handwriting-style glyphs drawn from stroke data, taps/data/glyphs.py), on a small
version of it: generated deterministically, splits that share no image, no flip, and a task that
fine-tuning and TAPS both learn within one epoch (a random head once kept fine-tuning at chance)."""
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from taps.data import glyphs
from taps.data import get_manifest, load_dataset
from taps.errors import DatasetUnavailableError
from taps.training.trainer import TrainConfig, chance_warning, train

SMALL_CHARS = ["未", "末", "土", "士", "大", "太", "日", "曰", "干", "千"]  # five near-twin pairs


def small_source(**change) -> dict:
    src = dict(get_manifest("hanzi")["sources"][0])
    return src | {"splits": {"train": 30, "val": 10, "test": 10}, "image_size": 36} | change


@pytest.fixture
def small_hanzi(tmp_path, monkeypatch):
    """The hanzi manifest cut to 10 classes and 60/10/10 drawings each, at 36 px (32 px crops)."""
    text = (Path(__file__).parent.parent / "data_manifests" / "hanzi.toml").read_text()
    for pattern, replacement in ((r"num_classes = \d+", f"num_classes = {len(SMALL_CHARS)}"),
                                 (r"classes = \[[^\]]*\]", f"classes = {json.dumps(SMALL_CHARS, ensure_ascii=False)}"),
                                 (r"size = 64", "size = 32"), (r"image_size = \d+", "image_size = 36"),
                                 (r"splits = \{[^}]*\}", "splits = { train = 60, val = 10, test = 10 }")):
        text, n = re.subn(pattern, lambda _: replacement, text, count=1)
        assert n == 1, pattern
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "hanzi.toml").write_text(text)
    monkeypatch.setenv("TAPS_MANIFEST_DIR", str(tmp_path / "manifests"))
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))


def test_generation_is_deterministic_and_cached(tmp_path):
    first = glyphs.glyph_splits(small_source(), SMALL_CHARS, tmp_path, tmp_path / "a")
    second = glyphs.glyph_splits(small_source(), SMALL_CHARS, tmp_path, tmp_path / "b")  # drawn again
    cached = glyphs.glyph_splits(small_source(), SMALL_CHARS, tmp_path, tmp_path / "a")  # read back
    assert len(list((tmp_path / "a").glob("*.npz"))) == 1
    for split in ("train", "val", "test"):
        for other in (second, cached):
            assert np.array_equal(first[split][0], other[split][0])
            assert np.array_equal(first[split][1], other[split][1])
    images, labels = first["train"]
    assert images.shape == (300, 36, 36) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [30] * 10
    assert images.max() == 255 and np.median(images) == 0  # white strokes on black


def test_a_split_keeps_its_images_when_another_grows(tmp_path):
    small = glyphs.glyph_splits(small_source(), SMALL_CHARS, tmp_path, tmp_path)
    grown = glyphs.glyph_splits(small_source(splits={"train": 40, "val": 10, "test": 10}), SMALL_CHARS,
                                tmp_path, tmp_path)
    assert np.array_equal(small["test"][0], grown["test"][0])
    assert np.array_equal(small["train"][0][:30], grown["train"][0][:30])  # class 0's first 30 drawings


def test_splits_share_no_image_and_no_drawing_repeats(tmp_path):
    splits = glyphs.glyph_splits(small_source(), SMALL_CHARS, tmp_path, tmp_path)
    digests = {split: [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
               for split, (images, _) in splits.items()}
    everything = [d for ds in digests.values() for d in ds]
    assert len(set(everything)) == len(everything) == 500


def test_damaged_tarball_is_named(tmp_path):
    bad = tmp_path / small_source()["file"]
    bad.write_bytes(b"not a tarball")
    src = small_source() | {"sha256": None}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(glyphs, "tarball_locations", lambda s, root: [bad])
        with pytest.raises(DatasetUnavailableError, match="cannot read .*not a tarball|cannot read"):
            glyphs.glyph_splits(src, SMALL_CHARS, tmp_path, tmp_path)
        with pytest.raises(DatasetUnavailableError, match="sha256 differs"):
            glyphs.glyph_splits(small_source(), SMALL_CHARS, tmp_path, tmp_path)


def test_training_crops_are_never_mirrored(small_hanzi):
    data = load_dataset("hanzi", resolution=32, mean=(0, 0, 0), std=(1, 1, 1))
    stored = data.train.images[0, 0].float() / 255  # 36×36, class 未
    mirrored = stored.flip(-1)
    crops = lambda im: {(i, j): im[i:i + 32, j:j + 32] for i in range(5) for j in range(5)}
    torch.manual_seed(0)
    for _ in range(40):
        out = data.train[0][0][0]
        assert any(torch.allclose(out, c, atol=1e-6) for c in crops(stored).values())
        assert not any(torch.allclose(out, c, atol=1e-6) for c in crops(mirrored).values())


def _one_epoch(method: str, **change) -> dict:
    config = TrainConfig.from_flat(dataset="hanzi", method=method, resolution=32, train_subset=None, eval_subset=None,
                         epochs=1, batch_size=16, **change)
    return train(config).history[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["finetune", "taps"])
def test_finetuning_and_taps_leave_chance_within_one_epoch(small_hanzi, method):
    epoch = _one_epoch(method)  # 37 steps
    chance = 1 / len(SMALL_CHARS)
    assert epoch["train_loss"] < 0.85 * math.log(len(SMALL_CHARS)), epoch
    assert epoch["test_acc"] >= 3 * chance, epoch
    assert epoch["warning"] is None


def test_a_loss_at_chance_after_the_first_epoch_is_reported():
    assert chance_warning(math.log(50) * 0.99, 50).startswith(
        "training loss 3.873 at the end of the first epoch is still at chance (ln 50 = 3.912)")
    assert chance_warning(math.log(50) * 0.5, 50) is None


@pytest.mark.slow
def test_finetuning_keeps_the_pretrained_features_alive():
    """The failure a random head caused on this task (Lite0, frozen norm statistics): within ten
    SGD steps 97 % of the pooled features were dead (zero) and fine-tuning stayed near chance.
    With the zero-initialised head, about three quarters are zero, as in the pretrained model."""
    from torch.utils.data import DataLoader

    from taps.training.trainer import Normalize, build_model, build_optimizer, input_normalization, load_task_data
    from taps.training.methods import set_train_mode

    config = TrainConfig.from_flat(method="finetune", train_subset=320, eval_subset=50)
    data = load_task_data(config, config.data.dataset)
    model = build_model(config, len(data.classes))
    normalize, optimizer = Normalize(*input_normalization(model)), build_optimizer(model, config)
    pooled = []
    model.get_classifier().register_forward_pre_hook(lambda m, args: pooled.append(args[0].detach()))
    set_train_mode(model, freeze_norm_stats=config.freezes_norm_stats)
    for images, labels in DataLoader(data.train, batch_size=32, shuffle=True,
                                     generator=torch.Generator().manual_seed(0)):
        loss = torch.nn.functional.cross_entropy(model(normalize(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dead = [(f == 0).float().mean().item() for f in pooled]
    assert dead[0] < 0.8 and max(dead) < 0.9, dead
