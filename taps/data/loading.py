"""Loading a dataset by name or folder: which datasets are here, the train/val/test datasets of
one (source picked, opened, split, transformed), a run's data checked before it is queued, and
the evaluation preprocessing for an image from elsewhere."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetUnavailableError
from .datasets import ImageFiles, TensorImages
from .images import Pool, to_rgb
from .manifests import default_data_root, get_manifest, how_to_get, known_manifests
from .sources import available, class_names, describe, open_source
from .splits import plan_splits
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, Normalise, PILTransform, TensorTransform, pil_geometry,
                         resize_uint8, store_size)

_INDEXED_CHEAPLY = ("debian-idx", "sklearn", "imagefolder")  # checked in full before a run is queued
# In-memory datasets bigger than this at the target size stay at native size, resized per sample.
_MAX_PRERESIZED_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    num_classes: int
    available: bool          # files are on this machine now (checked without any network)
    source: str | None       # the source load_dataset would use (or could download)
    how_to_get: str
    benchmark: str = ""


@dataclass(repr=False)
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    name: str
    manifest: dict
    source: str = ""

    def __repr__(self) -> str:
        return (f"DataSplits({self.name!r}: {len(self.train)} train / {len(self.val)} val / "
                f"{len(self.test)} test, {len(self.classes)} classes, from {self.source})")


def list_datasets(data_root: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """Every known dataset and whether it is on this machine now (no network is touched)."""
    root = Path(data_root).expanduser() if data_root else default_data_root()
    out = []
    for name, m in sorted(known_manifests().items()):
        src = next((s for s in m["sources"] if available(s, m, root)), None)
        if src is not None:
            source = describe(src, m, root)
        else:
            tv = next((s for s in m["sources"] if s["kind"] == "torchvision"), None)
            source = f"{describe(tv, m, root)} (download: allow_download=True)" if tv else None
        out.append(DatasetInfo(name, m["title"], m["num_classes"], src is not None, source,
                               how_to_get(m, root), m.get("benchmark", "")))
    return out


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    resolution: int | None = 64,
    train_subset: int | None = None,
    val_fraction: float = 0.1,
    test_subset: int | None = None,
    seed: int = 0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    augment: bool = True,
    data_root: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> DataSplits:
    """Train/val/test datasets of (float 3×R×R normalised, int label); see the module docstring.

    resolution:   side R of the images; None takes the manifest's (paper) size.
    train_subset: class-balanced subset of N training images (seeded).
    val_fraction: share of train carved (stratified, seeded) as val when there is no official val.
    test_subset:  caps val and test at N images each, class-balanced (test fixed across seeds).
    augment:      False gives the training split the evaluation transform.
    data_root:    where torchvision data and image folders live (default: default_data_root()).
    allow_download: let torchvision download when no local source has the files.
    """
    m = get_manifest(name_or_path)
    size = m["input"]["size"] if resolution is None else resolution
    _check_args(m, size, val_fraction, train_subset, test_subset, seed, mean, std)
    root = Path(data_root).expanduser() if data_root else default_data_root()

    src, download = _pick_source(m, root, allow_download)
    pools, source_classes = open_source(src, m, root, download)
    classes = class_names(src, m, pools, source_classes)

    plan = plan_splits(m, pools, classes=classes, val_fraction=val_fraction, seed=seed, train_subset=train_subset,
                 test_subset=test_subset)
    norm, train_ops = Normalise(mean, std), (tuple(m["augment"]["train"]) if augment else ())
    splits = {role: _make_split(pools[pool], pool, pos, size, m["augment"],
                                train_ops if role == "train" else (), norm, classes)
              for role, (pool, pos) in plan.items()}
    return DataSplits(splits["train"], splits["val"], splits["test"], list(classes), m["name"], m,
                      describe(src, m, root) + (" (downloaded)" if download else ""))


def eval_transform(name_or_path: str | os.PathLike, resolution: int | None = None, *,
                   mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                   std: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """The dataset's evaluation preprocessing for one PIL image of any mode → float 3×R×R:
    what the test split applies, so an image from elsewhere (an upload) is seen the same way.
    The default mean/std leave pixels in [0, 1], as the trainer feeds its models."""
    m = get_manifest(name_or_path)
    size = m["input"]["size"] if resolution is None else int(resolution)
    geometry = pil_geometry(size, m["augment"], ())
    norm = Normalise(mean, std)
    return lambda img: PILTransform(geometry, norm)(to_rgb(img))


def require_dataset(name_or_path: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                    allow_download: bool = False, train_subset: int | None = None, val_fraction: float = 0.1,
                    seed: int = 0) -> dict:
    """The manifest of a dataset that can be loaded here; else the error that says how to get it.
    Sources that index without decoding (image folders, scikit-learn, IDX files) are also split
    as ``load_dataset`` would split them, so what it would refuse is refused now."""
    m = get_manifest(name_or_path)
    root = Path(data_root).expanduser() if data_root else default_data_root()
    src, _ = _pick_source(m, root, allow_download)
    if src["kind"] in _INDEXED_CHEAPLY:
        _check_folder_classes(src, m, root, val_fraction=val_fraction, seed=seed, train_subset=train_subset)
    return m


def _pick_source(m: dict, root: Path, allow_download: bool) -> tuple[dict, bool]:
    """The first source whose files are here; else a torchvision download if allowed."""
    src = next((s for s in m["sources"] if available(s, m, root)), None)
    if src is not None:
        return src, False
    tv = next((s for s in m["sources"] if s["kind"] == "torchvision"), None)
    if tv is not None and allow_download:
        return tv, True
    looked = "; ".join(describe(s, m, root) for s in m["sources"])
    raise DatasetUnavailableError(
        f"{m['title']} ({m['name']}) is not on this machine (looked for: {looked}).\n"
        f"How to get it: {how_to_get(m, root)}"
        + ("\nOnline? pass allow_download=True to let torchvision download it." if tv else ""))


def _make_split(pool: Pool, pool_name, pos, size, aug, ops, norm, classes) -> Dataset:
    if pool.images is None:
        transform = PILTransform(pil_geometry(size, aug, ops), norm)
        return ImageFiles(pool.reader, pos, pool.labels[pos], transform, size_hint=2 * size,
                          pool=pool_name, classes=classes)
    store = store_size(size, aug)
    channels = pool.images.shape[3] if pool.images.ndim == 4 else 1
    if len(pos) * channels * store * store <= _MAX_PRERESIZED_BYTES:
        images = resize_uint8(pool.images[pos], store)  # once, so epochs pay only augmentation
    else:  # too big at the target size: keep native size, resize per sample
        images = torch.from_numpy(np.ascontiguousarray(pool.images[pos]))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    transform = TensorTransform(size, store, ops, aug.get("scale", (0.08, 1.0)), norm)
    return TensorImages(images, pool.labels[pos], transform, indices=pos, pool=pool_name,
                        classes=classes)


def _check_args(m, size, val_fraction, train_subset, test_subset, seed, mean, std) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(size) or not 8 <= size <= 4096:
        raise ConfigError(f"resolution must be an integer in [8, 4096], got {size!r}")
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    for name, v in (("train_subset", train_subset), ("test_subset", test_subset)):
        if v is not None and (not is_int(v) or v < 1):
            raise ConfigError(f"{name} must be a positive integer or None, got {v!r}")
    if train_subset is not None and train_subset < m["num_classes"]:
        raise ConfigError(f"train_subset={train_subset} is smaller than the {m['num_classes']} "
                          "classes; take at least one image per class.")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"mean and std need 3 values each (std > 0), got {mean!r}, {std!r}")


def _check_folder_classes(src: dict, m: dict, data_root: Path, **split_settings) -> None:
    """A source is indexed (for a folder, a directory walk; nothing is decoded) and split as a run
    would split it, before the run is queued, so every refusal of ``open_folder`` and
    ``plan_splits`` comes at once instead of in its worker."""
    pools, source_classes = open_source(src, m, data_root, False)
    plan_splits(m, pools, classes=class_names(src, m, pools, source_classes), **split_settings)
