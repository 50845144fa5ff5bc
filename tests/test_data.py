"""taps.data: manifests, offline loading, deterministic splits, image folders, error messages."""
from __future__ import annotations

import io
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
import torchvision.datasets
from PIL import Image
from torch.utils.data import DataLoader

from taps import data
from taps.data import DataSplits, get_manifest, list_datasets, load_dataset, validate_manifest
from taps.data.sources import read_idx
from taps.errors import ConfigError, DatasetUnavailableError, UnknownDatasetError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

MANIFESTS = Path(__file__).resolve().parent.parent / "data_manifests"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(data.IMAGENET_STD).view(3, 1, 1)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


@pytest.fixture(scope="module")
def fmnist() -> DataSplits:
    return load_dataset("fashion-mnist", train_subset=3000, seed=0)


# ----------------------------------------------------------------------------- Fashion-MNIST

def test_fashion_mnist_loads_offline_with_balanced_subset(fmnist):
    assert fmnist.name == "fashion-mnist"
    assert fmnist.source.startswith("debian-idx")
    assert len(fmnist.classes) == 10 and fmnist.classes[0] == "T-shirt/top"
    assert fmnist.classes[9] == "Ankle boot"
    assert len(fmnist.train) == 3000
    assert np.bincount(fmnist.train.targets, minlength=10).tolist() == [300] * 10
    # no official val: 10 % of the 60k training images, stratified (600 per class)
    assert len(fmnist.val) == 6000
    assert np.bincount(fmnist.val.targets, minlength=10).tolist() == [600] * 10
    assert len(fmnist.test) == 10000 and fmnist.test.pool == "test"
    x, y = fmnist.train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y == int(fmnist.train.targets[0]) and 0 <= y < 10


def test_grayscale_is_expanded_to_three_equal_channels(fmnist):
    x, _ = fmnist.val[0]
    rgb = unnormalise(x)
    assert torch.allclose(rgb[0], rgb[1], atol=1e-5) and torch.allclose(rgb[1], rgb[2], atol=1e-5)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5 and rgb.std() > 0.05


def test_val_is_disjoint_from_train(fmnist):
    assert fmnist.train.pool == fmnist.val.pool == "train"
    assert not set(fmnist.train.indices.tolist()) & set(fmnist.val.indices.tolist())


def test_same_seed_same_splits_other_seed_different(fmnist):
    again = load_dataset("fashion-mnist", train_subset=3000, seed=0)
    assert np.array_equal(again.train.indices, fmnist.train.indices)
    assert np.array_equal(again.val.indices, fmnist.val.indices)
    assert torch.equal(again.train.images, fmnist.train.images)
    other = load_dataset("fashion-mnist", train_subset=3000, seed=1)
    assert len(set(other.train.indices.tolist()) - set(fmnist.train.indices.tolist())) > 2000
    assert not np.array_equal(other.val.indices, fmnist.val.indices)
    assert np.bincount(other.train.targets, minlength=10).tolist() == [300] * 10
    assert np.array_equal(other.test.indices, fmnist.test.indices)  # test never depends on seed


def test_test_subset_caps_val_and_test_class_balanced(fmnist):
    s = load_dataset("fashion-mnist", train_subset=500, test_subset=200, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (500, 200, 200)
    assert np.bincount(s.val.targets, minlength=10).tolist() == [20] * 10
    assert np.bincount(s.test.targets, minlength=10).tolist() == [20] * 10
    # the val split is carved before any subsetting: same seed, same carve
    assert set(s.val.indices.tolist()) <= set(fmnist.val.indices.tolist())
    assert not set(s.train.indices.tolist()) & set(fmnist.val.indices.tolist())


def test_pixels_match_the_idx_file_and_are_normalised():
    s = load_dataset("fashion-mnist", train_subset=100, test_subset=10, augment=False)
    raw = read_idx(FMNIST_DIR / "train-images-idx3-ubyte.gz")
    i = int(s.train.indices[7])
    expected = nnf.interpolate(torch.from_numpy(raw[i].astype(np.float32))[None, None], size=(64, 64),
                               mode="bilinear", align_corners=False, antialias=True)[0, 0] / 255
    got = unnormalise(s.train[7][0])
    assert torch.allclose(got[0], expected, atol=2 / 255)
    assert torch.equal(s.train[7][0], s.train[7][0])  # augment=False: deterministic


def test_training_augmentation_is_random_and_eval_is_not(fmnist):
    torch.manual_seed(0)
    a = [fmnist.train[3][0] for _ in range(4)]
    assert any(not torch.equal(a[0], b) for b in a[1:])
    assert torch.equal(fmnist.val[3][0], fmnist.val[3][0])


def test_loading_is_fast_and_batches_work():
    t = time.perf_counter()
    s = load_dataset("fashion-mnist", train_subset=3000, test_subset=1000, seed=7)
    assert time.perf_counter() - t < 5.0
    xb, yb = next(iter(DataLoader(s.train, batch_size=32, shuffle=True)))
    assert xb.shape == (32, 3, 64, 64) and yb.shape == (32,) and yb.dtype == torch.int64


# ----------------------------------------------------------------------------- digits

def test_digits_has_ten_classes_and_a_disjoint_fixed_test_split():
    s = load_dataset("digits", seed=0)
    assert s.classes == [str(i) for i in range(10)]
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert 340 <= len(s.test) <= 380 and set(np.unique(s.test.targets)) == set(range(10))
    tr, va, te = (set(d.indices.tolist()) for d in (s.train, s.val, s.test))
    assert not (tr & te) and not (va & te) and not (tr & va)
    assert s.train[0][0].shape == (3, 64, 64)
    other = load_dataset("digits", seed=3)
    assert np.array_equal(other.test.indices, s.test.indices)
    assert not np.array_equal(other.val.indices, s.val.indices)


def test_digits_pixels_are_the_sklearn_digits():
    from sklearn.datasets import load_digits

    s = load_dataset("digits", resolution=32, augment=False)
    x, y = s.test[0]
    i = int(s.test.indices[0])
    digits = load_digits()
    assert y == digits.target[i]
    small = nnf.adaptive_avg_pool2d(unnormalise(x)[:1][None], 8)[0, 0].flatten().numpy()
    assert np.corrcoef(small, digits.images[i].flatten())[0, 1] > 0.9


# ----------------------------------------------------------------------------- errors

def test_unknown_name_suggests_the_close_match():
    with pytest.raises(UnknownDatasetError) as e:
        get_manifest("fashion-mnst")
    assert "Did you mean 'fashion-mnist'" in str(e.value)
    assert "digits" in str(e.value) and "flowers102" in str(e.value)  # the known names
    assert isinstance(e.value, KeyError)
    with pytest.raises(UnknownDatasetError, match="fashion-mnist"):
        load_dataset("fashion-mnst")


def test_names_and_aliases_are_forgiving():
    assert get_manifest("Fashion_MNIST")["name"] == "fashion-mnist"
    assert get_manifest("cars")["name"] == "stanford-cars"
    assert get_manifest("CUB")["name"] == "cub-200"


def test_known_but_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailableError) as e:
        load_dataset("flowers102", data_root=tmp_path)
    msg = str(e.value)
    assert "Flowers-102" in msg and "allow_download=True" in msg and str(tmp_path) in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(DatasetUnavailableError, match="Piggyback"):
        load_dataset("cub-200", data_root=tmp_path)


def test_missing_debian_package_names_the_apt_command(tmp_path, monkeypatch):
    text = (MANIFESTS / "fashion-mnist.toml").read_text()
    text = text.replace('"/usr/share/datasets/fashion-mnist"', f'"{tmp_path / "nothing-here"}"')
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "fashion-mnist.toml").write_text(text)
    monkeypatch.setenv("TAPS_MANIFEST_DIR", str(tmp_path / "manifests"))
    with pytest.raises(DatasetUnavailableError) as e:
        load_dataset("fashion-mnist", data_root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert "allow_download=True" in str(e.value)
    [info] = list_datasets(data_root=tmp_path)
    assert info.name == "fashion-mnist" and not info.available


def test_list_datasets_reports_what_is_here(tmp_path):
    infos = {i.name: i for i in list_datasets(data_root=tmp_path)}
    assert set(infos) == {p.stem for p in MANIFESTS.glob("*.toml")}
    assert infos["fashion-mnist"].available and infos["fashion-mnist"].source.startswith("debian-idx")
    assert infos["digits"].available and infos["digits"].num_classes == 10
    assert not infos["flowers102"].available and "allow_download=True" in infos["flowers102"].how_to_get
    assert not infos["cub-200"].available and infos["cub-200"].source is None
    assert "apt-get install dataset-fashion-mnist" in infos["fashion-mnist"].how_to_get


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        load_dataset(tmp_path / "file.png")
    with pytest.raises(ConfigError, match="resolution"):
        load_dataset("digits", resolution=4)
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(ConfigError, match="train_subset"):
        load_dataset("digits", train_subset=5)


# ----------------------------------------------------------------------------- image folders

def _png(path: Path, mode: str, size=(40, 40), value=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8), "L")
    elif mode == "RGBA":
        arr = np.zeros((*size, 4), np.uint8)
        arr[:, size[1] // 2:] = (200, 10, 10, 255)   # right half opaque red, left half transparent
        img = Image.fromarray(arr, "RGBA")
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).convert("P")
    else:
        arr = np.full((*size, 3), value, np.uint8) if value is not None else \
            rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
    img.save(path)


def _truncated_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    cat = root / "train" / "cat"
    _truncated_jpeg(cat / "broken.jpg")
    _png(cat / "gray.png", "L")
    _png(cat / "palette.png", "P")
    _png(cat / "rgb.png", "RGB")
    _png(cat / "rgba.png", "RGBA")
    (cat / "notes.txt").write_text("not an image")
    for name, mode in (("a.png", "RGB"), ("b.png", "L"), ("c.png", "RGBA")):
        _png(root / "train" / "dog" / name, mode)
    for split in ("val", "test"):
        _png(root / split / "cat" / "x.png", "RGB")
        _png(root / split / "dog" / "y.png", "L")
    return root


def test_image_folder_mixed_modes_and_corrupt_jpeg_policy(mixed_folder, caplog):
    broken = mixed_folder / "train" / "cat" / "broken.jpg"
    with Image.open(broken) as img:
        img.verify()                     # a header check would pass it...
    with Image.open(broken) as img, pytest.raises(OSError):
        img.load()                       # ...but it cannot be decoded
    s = load_dataset(mixed_folder, resolution=32, augment=False)
    assert s.classes == ["cat", "dog"] and s.name == "pets"
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 2)   # the .txt is ignored
    with caplog.at_level(logging.WARNING, logger="taps.data"):
        items = [s.train[i] for i in range(len(s.train))] + [s.train[0]]
    assert all(x.shape == (3, 32, 32) and torch.isfinite(x).all() for x, _ in items)
    assert [y for _, y in items[:-1]] == s.train.targets.tolist() == [0] * 5 + [1] * 3
    # the broken file (first cat file) is replaced by the next cat image, with one warning
    assert s.train.bad_files == {str(broken)}
    assert torch.equal(items[0][0], items[1][0])
    assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1
    # grayscale -> equal channels; RGBA -> transparent left half is white, opaque half red
    gray = unnormalise(items[1][0])
    assert torch.allclose(gray[0], gray[2], atol=1e-5)
    rgba = unnormalise(items[4][0])
    assert torch.allclose(rgba[:, :, :8], torch.ones(3, 32, 8), atol=0.02)
    assert torch.allclose(rgba[:, :, -8:], torch.tensor([200, 10, 10]).view(3, 1, 1) / 255 *
                          torch.ones(3, 32, 8), atol=0.02)


def test_class_with_only_corrupt_images_fails_with_a_clear_message(tmp_path):
    root = tmp_path / "bad"
    for c in ("a", "b"):
        _png(root / "train" / c / "1.png", "RGB")
        _png(root / "train" / c / "2.png", "RGB")
    _truncated_jpeg(root / "val" / "a" / "broken.jpg")
    _png(root / "val" / "b" / "ok.png", "RGB")
    s = load_dataset(root, resolution=16)
    assert s.val[1][1] == 1
    with pytest.raises(DatasetUnavailableError, match=r"class 'a'.*val[/\\]a"):
        s.val[0]


def test_empty_class_folder_is_a_clear_error(tmp_path):
    _png(tmp_path / "flat" / "a" / "1.png", "RGB")
    _png(tmp_path / "flat" / "a" / "2.png", "RGB")
    (tmp_path / "flat" / "b").mkdir()
    (tmp_path / "flat" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"flat[/\\]b has no images"):
        load_dataset(tmp_path / "flat")


def test_flat_folder_carves_splits_and_normalises_mid_grey(tmp_path):
    root = tmp_path / "grey"
    for c in ("a", "b", "c"):
        for i in range(10):
            _png(root / c / f"{i}.png", "RGB", size=(24, 30), value=128)
    manifest = get_manifest(root)
    assert manifest["num_classes"] == 3 and manifest["sources"][0]["kind"] == "imagefolder"
    s = load_dataset(root, resolution=16, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (21, 3, 6)
    tr, va, te = (set(d.indices.tolist()) for d in (s.train, s.val, s.test))
    assert not (tr & va) and not (tr & te) and not (va & te)
    expected = (128 / 255 - MEAN.flatten()) / STD.flatten()
    for x in (s.train[0][0], s.test[0][0]):        # augmented and eval paths alike
        assert x.shape == (3, 16, 16)
        assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-4)
    half = load_dataset(root, resolution=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), augment=False)
    assert torch.allclose(half.train[0][0], torch.full((3, 16, 16), (128 / 255 - 0.5) / 0.5), atol=1e-5)


# ----------------------------------------------------------------------------- manifests

REQUIRED = {
    "fashion-mnist", "digits", "flowers102", "stanford-cars", "cub-200", "sketch", "wikiart",
    "aircraft", "cifar-100", "daimler-pedestrians", "dtd", "gtsrb", "omniglot", "svhn",
    "ucf101-dynamic-images", *(f"domainnet-{d}" for d in
                               ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
}


def _all_manifests() -> dict[str, dict]:
    out = {}
    for path in sorted(MANIFESTS.glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = tomllib.load(f)
    return out


def test_every_manifest_parses_and_has_the_required_fields():
    manifests = _all_manifests()
    assert REQUIRED <= set(manifests)
    for stem, m in manifests.items():
        validate_manifest(m, stem)
        assert m["name"] == stem
        assert set(data.REQUIRED_FIELDS) <= set(m)
        assert m["how_to_get"].strip() and m["title"] and m["license"] and m["homepage"]
        assert m["input"]["normalisation"] == "imagenet" and m["input"]["size"] >= 32
        for src in m["sources"]:
            assert src["kind"] in data.SOURCE_KINDS
            if src["kind"] == "torchvision":
                assert hasattr(torchvision.datasets, src["class"]), (stem, src["class"])
        if "classes" in m:
            assert len(m["classes"]) == m["num_classes"]


def test_manifests_follow_the_paper():
    m = _all_manifests()
    assert [s["kind"] for s in m["fashion-mnist"]["sources"]] == ["debian-idx", "torchvision"]
    assert m["fashion-mnist"]["sources"][0]["path"] == str(FMNIST_DIR)
    assert m["digits"]["sources"][0]["kind"] == "sklearn"
    for name in ("stanford-cars", "cub-200"):   # flip only, no RandomResizedCrop
        assert m[name]["augment"]["train"] == ["horizontal_flip"]
    for name in ("flowers102", "sketch", "wikiart", "domainnet-real"):
        assert m[name]["augment"]["train"] == ["random_resized_crop", "horizontal_flip"]
        assert m[name]["input"]["size"] == 224
    for name in ("digits", "svhn", "omniglot", "gtsrb"):   # mirrored digits/characters/signs
        assert "horizontal_flip" not in m[name]["augment"]["train"]
    for name in ("cub-200", "sketch", "wikiart", "daimler-pedestrians", "ucf101-dynamic-images",
                 "domainnet-quickdraw"):
        assert m[name]["sources"][0]["kind"] == "imagefolder"
    assert {s["class"] for n in ("aircraft", "cifar-100", "dtd", "gtsrb", "svhn", "flowers102")
            for s in m[n]["sources"] if s["kind"] == "torchvision"} == \
        {"FGVCAircraft", "CIFAR100", "DTD", "GTSRB", "SVHN", "Flowers102"}
    assert m["cifar-100"]["num_classes"] == len(m["cifar-100"]["classes"]) == 100


def test_validate_manifest_rejects_broken_manifests():
    good = _all_manifests()["fashion-mnist"]
    validate_manifest(good)
    broken = {k: v for k, v in good.items() if k != "how_to_get"}
    with pytest.raises(ConfigError, match="how_to_get"):
        validate_manifest(broken)
    with pytest.raises(ConfigError, match="augment.train"):
        validate_manifest({**good, "augment": {"train": ["rotate"], "eval": "resize"}})
    with pytest.raises(ConfigError, match="kind"):
        validate_manifest({**good, "sources": [{"kind": "ftp"}]})
    with pytest.raises(ConfigError, match="classes"):
        validate_manifest({**good, "classes": ["a", "b"]})


# ----------------------------------------------------------------------------- torchvision sources

def test_torchvision_array_source_gives_the_same_images(tmp_path, monkeypatch, fmnist):
    """Fashion-MNIST through torchvision.datasets.FashionMNIST (the online route), no download."""
    import gzip

    raw = tmp_path / "root" / "fashion-mnist" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in FMNIST_DIR.glob("*.gz"):
        (raw / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
    text = (MANIFESTS / "fashion-mnist.toml").read_text()
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "fashion-mnist.toml").write_text(
        text.replace('"/usr/share/datasets/fashion-mnist"', '"/nonexistent"'))
    monkeypatch.setenv("TAPS_MANIFEST_DIR", str(tmp_path / "manifests"))
    s = load_dataset("fashion-mnist", train_subset=3000, seed=0, data_root=tmp_path / "root")
    assert s.source.startswith("torchvision FashionMNIST")
    assert np.array_equal(s.train.indices, fmnist.train.indices)
    assert torch.equal(s.train.images, fmnist.train.images)


def test_torchvision_photo_source_decodes_lazily(tmp_path):
    """A tiny DTD in torchvision's layout: labels from the txt files, images decoded by PIL."""
    base = tmp_path / "dtd" / "dtd" / "dtd"   # <data_root>/dtd, then torchvision's own dtd/dtd
    lines = {"train": [], "val": [], "test": []}
    for c in ("banded", "zigzagged"):
        for i in range(6):
            _png(base / "images" / c / f"{c}_{i}.jpg", "RGB", size=(50, 40))
            lines["train" if i < 3 else "val" if i < 4 else "test"].append(f"{c}/{c}_{i}.jpg")
    (base / "labels").mkdir()
    for split, names in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(names) + "\n")
    assert next(i for i in list_datasets(tmp_path) if i.name == "dtd").available
    s = load_dataset("dtd", data_root=tmp_path, resolution=32)
    assert s.classes == ["banded", "zigzagged"]
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 4)   # official val is used
    x, y = s.train[4]
    assert x.shape == (3, 32, 32) and y == 1 and isinstance(s.train, data.ImageFiles)


# ----------------------------------------------------------------------------- single images (uploads)

def test_eval_transform_of_a_file_equals_the_test_split(mixed_folder):
    split = load_dataset(mixed_folder, resolution=24, mean=(0, 0, 0), std=(1, 1, 1))
    transform = data.eval_transform(mixed_folder, 24)
    for k in range(len(split.test)):
        path = split.test.reader.name(int(split.test.indices[k]))
        with Image.open(path) as img:
            torch.testing.assert_close(transform(img), split.test[k][0])


def test_eval_transform_matches_the_in_memory_fashion_mnist_path():
    split = load_dataset("fashion-mnist", resolution=64, test_subset=10, mean=(0, 0, 0), std=(1, 1, 1))
    raw = load_dataset("fashion-mnist", resolution=28, test_subset=10, mean=(0, 0, 0), std=(1, 1, 1))
    transform = data.eval_transform("fashion-mnist", 64)
    for k in range(10):
        img = Image.fromarray((raw.test[k][0][0].numpy() * 255).round().astype(np.uint8))
        # PIL's and torch's antialiased bilinear resizes differ by rounding only.
        assert (transform(img) - split.test[k][0]).abs().max() < 3 / 255


def test_decode_image_accepts_any_mode_and_refuses_what_is_not_an_image():
    for mode in ("L", "RGBA", "P", "RGB"):
        buf = io.BytesIO()
        Image.new(mode, (30, 20)).save(buf, format="PNG")
        img = data.decode_image(buf.getvalue())
        assert (img.mode, img.size) == ("RGB", (30, 20))
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, format="JPEG")
    with pytest.raises(ConfigError, match="not an image in a format Pillow reads"):
        data.decode_image(b"%PDF-1.4 not pixels")
    with pytest.raises(ConfigError, match="image data is damaged"):
        data.decode_image(jpeg.getvalue()[:300])
    with pytest.raises(ConfigError, match=r"64×64 pixels; at most 1,000"):  # refused from the header
        data.decode_image(jpeg.getvalue(), max_pixels=1000)
