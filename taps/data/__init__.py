"""Datasets: manifests, offline-first loading and reproducible splits.

    from taps.data import list_datasets, load_dataset
    splits = load_dataset("fashion-mnist", resolution=64, train_subset=3000, test_subset=1000)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=32, shuffle=True)
    x, y = splits.train[0]          # float32 3×64×64 (normalised), int label

Each known dataset is described by ``data_manifests/<name>.toml``: its sources in order of
preference, splits, class names, paper resolution and augmentation. Any folder of images in class
sub-folders works too, without a manifest: ``load_dataset("path/to/folder")``. A folder holding
``train/`` (and optionally ``val/``, ``test/``) sub-folders uses those as official splits.

Splits. Official splits are used as they are. A missing val is carved from train (stratified,
seeded by ``seed``). A missing test is carved from train with a *fixed* seed, so runs with
different seeds are scored on the same images. ``train_subset=N`` keeps a class-balanced N-image
subset of train (seeded); ``test_subset=N`` caps val and test at N images each, class-balanced
(val seeded, test fixed), to make evaluation cheap. Every split exposes ``targets`` (labels),
``indices`` (positions in the source split named by ``pool``) and ``classes``.

Speed. Array datasets (Fashion-MNIST, digits, CIFAR, SVHN) are resized once into a uint8 tensor at
the target size; augmentation then runs per sample on that small tensor (~0.1 ms). Image folders
decode lazily with PIL; JPEG draft mode decodes big photos at reduced size.

Corrupt images: one policy, "substitute and warn". Image files are chosen by extension (other
files, e.g. .txt, are ignored) and are not opened at load time, so loading costs a directory walk
whatever the folder's size. An image that fails to decode is logged once (a warning naming the
file), added to ``dataset.bad_files`` and replaced by the next readable image of the same class in
the same split, so an epoch never stops half-way. Only a class with no readable image left in the
split raises, naming the class folder. (A header check at load time would not do: PIL's
``verify()`` passes truncated JPEGs, which fail only on a full decode.) With DataLoader workers,
``bad_files`` fills in the workers' copies; the warnings still reach the log.

The package, in the order data flows: ``manifests`` (the format and lookup), ``sources`` (where
pixels come from; ``folders`` for image folders, ``images`` for decoding), ``splits`` (carving
and subsets), ``transforms`` (uint8 to normalised tensors), ``datasets`` (what a split holds),
``loading`` (the public functions below, which join them).
"""
from .datasets import ImageFiles, TensorImages
from .folders import IMAGE_EXTENSIONS
from .images import MAX_UPLOAD_PIXELS, decode_image
from .loading import DatasetInfo, DataSplits, eval_transform, list_datasets, load_dataset, require_dataset
from .manifests import (DEFAULT_TEST_FRACTION, EVAL_MODES, REQUIRED_FIELDS, SOURCE_KINDS, TRAIN_OPS,
                        default_data_root, get_manifest, manifest_dir, validate_manifest)
from .splits import TEST_SEED
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DEFAULT_TEST_FRACTION", "EVAL_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS",
    "MAX_UPLOAD_PIXELS", "REQUIRED_FIELDS", "SOURCE_KINDS", "TEST_SEED", "TRAIN_OPS",
    "DataSplits", "DatasetInfo", "ImageFiles", "TensorImages",
    "decode_image", "default_data_root", "eval_transform", "get_manifest", "list_datasets", "load_dataset",
    "manifest_dir", "require_dataset", "validate_manifest",
]
