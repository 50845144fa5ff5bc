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
"""
from __future__ import annotations

import copy
import difflib
import functools
import io
import importlib.util
import logging
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

from . import glyphs
from .errors import ConfigError, DatasetUnavailableError, UnknownDatasetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
SOURCE_KINDS = ("debian-idx", "sklearn", "torchvision", "imagefolder", "stroke-glyphs")
_INDEXED_CHEAPLY = ("debian-idx", "sklearn", "imagefolder")  # checked in full before a run is queued
TRAIN_OPS = ("random_resized_crop", "random_crop", "horizontal_flip")
EVAL_MODES = ("resize", "center_crop")  # resize: whole image to R×R; center_crop: shorter side R/crop
REQUIRED_FIELDS = ("name", "title", "num_classes", "sources", "splits", "input", "augment",
                   "license", "homepage", "how_to_get")
DEFAULT_TEST_FRACTION = 0.2
TEST_SEED = 0  # test splits and test subsets never depend on the run's seed

# Independent random streams, so changing e.g. train_subset never moves the val split.
_STREAM_TEST, _STREAM_VAL, _STREAM_TRAIN_SUBSET, _STREAM_VAL_SUBSET, _STREAM_TEST_SUBSET = range(5)
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


# ----------------------------------------------------------------------------- manifests

def manifest_dir() -> Path:
    return Path(os.environ.get("TAPS_MANIFEST_DIR")
                or Path(__file__).resolve().parent.parent / "data_manifests")


def default_data_root() -> Path:
    """Where torchvision downloads and image folders live: $TAPS_DATA_ROOT or ~/.cache/taps/data."""
    return Path(os.environ.get("TAPS_DATA_ROOT") or "~/.cache/taps/data").expanduser()


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def validate_manifest(m: dict, where: str = "manifest") -> None:
    """Raise ConfigError listing every problem of a parsed manifest."""
    problems = [f"missing field {f!r}" for f in REQUIRED_FIELDS if f not in m]
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    k = m["num_classes"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        problems.append(f"num_classes must be a positive integer, got {k!r}")
    if "classes" in m and (len(m["classes"]) != k or len(set(m["classes"])) != len(m["classes"])):
        problems.append(f"classes must be {k} distinct names, got {len(m['classes'])}")
    if not str(m["how_to_get"]).strip():
        problems.append("how_to_get is empty")
    size = m["input"].get("size")
    if not isinstance(size, int) or size < 8:
        problems.append(f"input.size must be an integer ≥ 8, got {size!r}")
    aug = m["augment"]
    bad_ops = [op for op in aug.get("train", []) if op not in TRAIN_OPS]
    if "train" not in aug or bad_ops:
        problems.append(f"augment.train must list some of {TRAIN_OPS}, got {aug.get('train')!r}")
    if aug.get("eval") not in EVAL_MODES:
        problems.append(f"augment.eval must be one of {EVAL_MODES}, got {aug.get('eval')!r}")
    if not 0 < aug.get("crop", 0.875) <= 1:
        problems.append(f"augment.crop must be in (0, 1], got {aug['crop']!r}")
    scale = aug.get("scale", [0.08, 1.0])
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        problems.append(f"augment.scale must be [low, high] within (0, 1], got {scale!r}")
    sp = m["splits"]
    roles = {r: sp.get(r) for r in ("train", "val", "test")}
    if not all(isinstance(v, str) for v in roles.values()) or roles["train"] == "carve":
        problems.append(f"splits needs train, val and test (a split name, or 'carve'), got {sp!r}")
    needed = {v for v in roles.values() if v != "carve"}
    if not m["sources"]:
        problems.append("no sources")
    for i, src in enumerate(m["sources"]):
        kind = src.get("kind")
        need = {"debian-idx": ("path", "files"), "sklearn": ("loader",),
                "torchvision": ("class", "marker", "splits"), "imagefolder": ("path",),
                "stroke-glyphs": ("package", "version", "file", "splits", "seed", "image_size")}.get(kind)
        if need is None:
            problems.append(f"sources[{i}].kind must be one of {SOURCE_KINDS}, got {kind!r}")
            continue
        problems += [f"sources[{i}] ({kind}) needs {f!r}" for f in need if f not in src]
        if kind == "stroke-glyphs" and "classes" not in m:
            problems.append(f"sources[{i}] ({kind}) draws the manifest's classes: list them")
        missing = needed - set(_source_splits(src))
        if missing:
            problems.append(f"sources[{i}] ({kind}) lacks split(s) {sorted(missing)} named in [splits]")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def _source_splits(src: dict) -> list[str]:
    if src["kind"] == "debian-idx":
        return list(src.get("files", {}))
    if src["kind"] == "sklearn":
        return ["all"]
    return list(src.get("splits") or {"all": ""})


def _stamp() -> tuple:
    d = manifest_dir()
    return (str(d),) + tuple((p.name, p.stat().st_mtime_ns) for p in sorted(d.glob("*.toml")))


@functools.lru_cache(maxsize=4)
def _parse_manifests(stamp: tuple) -> tuple[dict[str, dict], dict[str, str]]:
    """name -> manifest and lookup key (name or alias) -> name; re-read when a file changes."""
    manifests, lookup = {}, {}
    for fname, _ in stamp[1:]:
        path = Path(stamp[0]) / fname
        try:
            with open(path, "rb") as f:
                m = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        validate_manifest(m, str(path))
        if m["name"] != path.stem:
            raise ConfigError(f"{path}: name {m['name']!r} differs from the file name")
        manifests[m["name"]] = m
        for key in [m["name"], *m.get("aliases", [])]:
            if lookup.setdefault(_key(key), m["name"]) != m["name"]:
                raise ConfigError(f"{path}: name or alias {key!r} is also used by {lookup[_key(key)]!r}")
    return manifests, lookup


def _manifests() -> tuple[dict[str, dict], dict[str, str]]:
    return _parse_manifests(_stamp())


def get_manifest(name: str | os.PathLike) -> dict:
    """The manifest of a known dataset (by name or alias), or one made up for a folder of images."""
    text = os.fspath(name)
    if not text.strip():
        raise UnknownDatasetError("Empty dataset name; pass a known name or a folder path.")
    is_pathlike = isinstance(name, os.PathLike) or "/" in text or os.sep in text or text[:1] in "~."
    if not is_pathlike:
        manifests, lookup = _manifests()
        if _key(text) in lookup:
            return copy.deepcopy(manifests[lookup[_key(text)]])
        if Path(text).is_dir():
            return _folder_manifest(Path(text))
        close = difflib.get_close_matches(_key(text), list(lookup), n=3, cutoff=0.6)
        close = list(dict.fromkeys(lookup[c] for c in close))
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownDatasetError(
            f"Unknown dataset {text!r}.{hint} Known datasets: {', '.join(sorted(manifests))}. "
            "Or pass the path of a folder of images with one sub-folder per class.")
    path = Path(text).expanduser()
    if not path.exists():
        raise DatasetUnavailableError(
            f"Image folder {path} does not exist. Pass a folder holding one sub-folder per class "
            "(optionally inside train/, val/, test/), or a known dataset name.")
    if not path.is_dir():
        raise ConfigError(f"{path} is a file; pass a folder holding one sub-folder per class.")
    return _folder_manifest(path)


def _folder_manifest(root: Path) -> dict:
    """An ImageFolder manifest for any folder; train/ val/ test/ sub-folders are official splits."""
    root = root.expanduser().resolve()
    layout = {s: s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in layout:
        layout = {"all": ""}
    train_pool = "train" if "train" in layout else "all"
    classes = _class_dirs(root / layout[train_pool])
    if not classes:
        raise ConfigError(f"{root / layout[train_pool]} has no class sub-folders: expected "
                          "<folder>/<class name>/<image files>.")
    return {
        "name": root.name, "title": root.name, "benchmark": "image folder",
        "num_classes": len(classes), "license": "unknown (your own images)", "homepage": "",
        "how_to_get": f"Put images in {root}/<class name>/ (or in train/, val/, test/ inside it).",
        "input": {"size": 224, "normalisation": "imagenet"},
        "splits": {"train": train_pool, "val": "val" if "val" in layout else "carve",
                   "test": "test" if "test" in layout else "carve",
                   "test_fraction": DEFAULT_TEST_FRACTION},
        "augment": {"train": ["random_resized_crop", "horizontal_flip"], "eval": "center_crop",
                    "crop": 0.875},
        "sources": [{"kind": "imagefolder", "path": str(root), "splits": layout}],
    }


# ----------------------------------------------------------------------------- sources

@dataclass
class _Pool:
    """One official split of a source: labels plus either a uint8 array or a lazy reader."""
    labels: np.ndarray
    images: np.ndarray | None = None   # N×H×W or N×H×W×C uint8
    reader: Any = None                 # .open(i, size_hint) -> PIL image, .name(i) -> str


def _source_root(src: dict, m: dict, data_root: Path) -> Path:
    if src["kind"] == "torchvision":
        return data_root / src.get("root", m["name"])
    path = Path(src["path"]).expanduser()
    return path if path.is_absolute() else data_root / path


def _available(src: dict, m: dict, data_root: Path) -> bool:
    kind = src["kind"]
    if kind == "debian-idx":
        return all((Path(src["path"]) / f).is_file() for pair in src["files"].values() for f in pair)
    if kind == "sklearn":
        return importlib.util.find_spec("sklearn") is not None
    if kind == "stroke-glyphs":
        return glyphs.find_tarball(src, data_root) is not None
    root = _source_root(src, m, data_root)
    if kind == "torchvision":
        return (root / src["marker"]).exists()
    return all((root / sub).is_dir() for sub in (src.get("splits") or {"all": ""}).values())


def _describe(src: dict, m: dict, data_root: Path) -> str:
    if src["kind"] == "debian-idx":
        return f"debian-idx {src['path']} (package {src.get('package', '?')})"
    if src["kind"] == "sklearn":
        return f"sklearn {src['loader']}"
    if src["kind"] == "torchvision":
        return f"torchvision {src['class']} in {_source_root(src, m, data_root)}"
    if src["kind"] == "stroke-glyphs":
        where = glyphs.find_tarball(src, data_root) or f"npm package {src['package']}@{src['version']}"
        return f"stroke-glyphs drawn from {where}"
    return f"imagefolder {_source_root(src, m, data_root)}"


def _how_to_get(m: dict, data_root: Path) -> str:
    return m["how_to_get"].strip().replace("<data_root>", str(data_root))


def _open_source(src: dict, m: dict, data_root: Path, download: bool):
    """Pools of one source plus the class names it knows (None if it knows none)."""
    kind = src["kind"]
    if kind == "debian-idx":
        base = Path(src["path"])
        return {split: _Pool(labels=_read_idx(base / lab).astype(np.int64), images=_read_idx(base / img))
                for split, (img, lab) in src["files"].items()}, None
    if kind == "sklearn":
        from sklearn import datasets
        bunch = getattr(datasets, src["loader"])()
        images = np.asarray(bunch.images, dtype=np.float64)
        images = np.round(images * (255.0 / max(images.max(), 1e-12))).astype(np.uint8)  # digits: 0..16
        names = [str(n) for n in getattr(bunch, "target_names", [])] or None
        return {"all": _Pool(labels=np.asarray(bunch.target, dtype=np.int64), images=images)}, names
    if kind == "torchvision":
        return _open_torchvision(src, m, data_root, download)
    if kind == "stroke-glyphs":
        return {split: _Pool(labels=labels, images=images)
                for split, (images, labels) in glyphs.glyph_splits(src, m["classes"], data_root).items()}, None
    return _open_folder(_source_root(src, m, data_root), src.get("splits") or {"all": ""},
                        m["splits"]["train"])


def _read_idx(path: Path) -> np.ndarray:
    return _read_idx_cached(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, _mtime: int) -> np.ndarray:
    """Parse an (optionally gzipped) unsigned-byte IDX file; Fashion-MNIST's 60k images in ~0.3 s."""
    raw = Path(path).read_bytes()
    try:
        if path.endswith(".gz"):
            raw = zlib.decompress(raw, wbits=31)  # one shot: faster than gzip.open().read()
        if raw[:3] != b"\0\0\x08":
            raise ValueError("not an unsigned-byte IDX file")
        ndim = raw[3]
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)  # read-only view
    except (zlib.error, ValueError, struct.error) as e:
        raise DatasetUnavailableError(f"{path} is damaged ({e}); reinstall or re-download it.") from e


def _open_torchvision(src: dict, m: dict, data_root: Path, download: bool):
    import torchvision.datasets as tvd

    root = _source_root(src, m, data_root)
    cls = getattr(tvd, src["class"])
    pools, classes = {}, None
    for split, kwargs in src["splits"].items():
        try:
            ds = cls(root=str(root), download=download, **src.get("kwargs", {}), **kwargs)
        except Exception as e:  # offline download, missing or broken files: all the same to the user
            action = "downloading it with torchvision failed" if download else "its files are incomplete"
            raise DatasetUnavailableError(
                f"{m['title']} ({m['name']}): {action} ({type(e).__name__}: {e}).\n"
                f"How to get it: {_how_to_get(m, data_root)}") from e
        labels = _tv_labels(ds)
        data = getattr(ds, "data", None)
        data = data.numpy() if isinstance(data, torch.Tensor) else data
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim in (3, 4):
            if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
                data = data.transpose(0, 2, 3, 1)  # SVHN keeps N×C×H×W
            pools[split] = _Pool(labels=labels, images=data)
        else:
            pools[split] = _Pool(labels=labels, reader=_TorchvisionReader(ds))
        classes = classes or getattr(ds, "classes", None)
    return pools, ([str(c) for c in classes] if classes else None)


def _tv_labels(ds) -> np.ndarray:
    """Labels without decoding images (each torchvision class keeps them somewhere else)."""
    for attr in ("targets", "labels", "_labels"):
        if getattr(ds, attr, None) is not None:
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    for attr in ("_samples", "samples", "_flat_character_images"):
        if getattr(ds, attr, None):
            return np.asarray([s[1] for s in getattr(ds, attr)], dtype=np.int64)
    log.info("reading every label of %s by decoding it (slow)", type(ds).__name__)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _is_image_name(filename: str) -> bool:
    return os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS


def _inside(real: str, boundary: str) -> bool:
    """Whether the resolved path ``real`` is ``boundary`` or lies under it."""
    return real == boundary or real.startswith(boundary.rstrip(os.sep) + os.sep)


def _image_files(folder: Path) -> tuple[list[str], int]:
    """Image files under a class folder (recursive, sorted) and how many other files were ignored.

    A symbolic link is followed only while it stays inside the class folder, and every real
    folder and file is taken once: a link back up (``a/up -> ..``) would otherwise be walked
    dozens of levels deep, counting the other classes' images as this class's. Links that lead
    out are skipped with a warning naming them."""
    boundary = os.path.realpath(folder)
    found, ignored, escaped = [], 0, []
    seen_dirs, seen_files = set(), set()
    stack = [(str(folder), boundary)]
    while stack:  # depth first, in name order: the order os.walk(topdown=True) gives
        path, real = stack.pop()
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        with os.scandir(path) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        subdirs = []
        for e in entries:
            target = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
            if not _inside(target, boundary):
                escaped.append(e.path)
            elif e.is_dir():
                subdirs.append((e.path, target))
            elif not _is_image_name(e.name):
                ignored += 1
            elif target not in seen_files:
                seen_files.add(target)
                found.append(e.path)
        stack.extend(reversed(subdirs))
    if escaped:
        log.warning("%s: skipped %d link(s) leading out of the class folder: %s", folder, len(escaped),
                    ", ".join(escaped[:3]) + (" …" if len(escaped) > 3 else ""))
    return found, ignored


def _no_images(class_folder: Path) -> ConfigError:
    return ConfigError(f"Class folder {class_folder} has no images (looked for "
                       f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder.")


def _check_own_folders(folders: list[Path], root: Path) -> None:
    """Each of these split or class folders is a real folder of its own inside the dataset
    folder: a link may not lead out of it, nor make two classes (or two splits) share images."""
    boundary, owner = os.path.realpath(root), {}
    for folder in folders:
        real = os.path.realpath(folder)
        if not _inside(real, boundary):
            raise ConfigError(f"{folder} is a link to {real}, outside the dataset folder {boundary}; "
                              "links are not followed out of the dataset folder.")
        if real in owner:
            raise ConfigError(f"{owner[real]} and {folder} are the same folder ({real}); "
                              "every class needs its own folder of images.")
        owner[real] = folder
    for real, folder in owner.items():
        up = real
        while up != boundary:  # every folder above it, up to the dataset folder
            up = os.path.dirname(up)
            if up in owner:
                raise ConfigError(f"{owner[up]} holds {folder} ({real}); every class needs its own "
                                  "folder of images.")


def _check_folder_classes(src: dict, m: dict, data_root: Path, **split_settings) -> None:
    """A source is indexed (for a folder, a directory walk; nothing is decoded) and split as a run
    would split it, before the run is queued, so every refusal of ``_open_folder`` and
    ``_check_splits`` comes at once instead of in its worker."""
    pools, source_classes = _open_source(src, m, data_root, False)
    _plan(m, pools, classes=_class_names(src, m, pools, source_classes), **split_settings)


def _class_names(src: dict, m: dict, pools: dict, source_classes) -> list[str]:
    if src["kind"] == "imagefolder":  # folder names are the truth for folders
        classes = source_classes
        if len(classes) != m["num_classes"]:
            log.warning("%s: found %d class folders, the manifest says %d", m["name"], len(classes),
                        m["num_classes"])
    else:
        classes = m.get("classes") or source_classes or [str(i) for i in range(m["num_classes"])]
    top = max((int(p.labels.max()) for p in pools.values() if len(p.labels)), default=-1)
    if top >= len(classes):
        raise ConfigError(f"{m['name']}: label {top} found but only {len(classes)} class names.")
    return list(classes)


def _open_folder(root: Path, layout: dict, train_pool: str):
    """Index an image folder: classes are the train folder's sub-folders (sorted)."""
    train_dir = root / layout[train_pool]
    _check_own_folders([root / sub for sub in layout.values()], root)
    classes = _class_dirs(train_dir)
    if not classes:
        raise ConfigError(f"{train_dir} has no class sub-folders: expected <folder>/<class>/<images>.")
    pools, ignored, class_folders = {}, 0, []
    for split, sub in layout.items():
        folder = root / sub
        unknown = sorted(set(_class_dirs(folder)) - set(classes))
        if unknown:
            raise ConfigError(f"{folder}: class folder(s) {unknown} do not exist in {train_dir}.")
        class_folders += [folder / c for c in classes if (folder / c).is_dir()]
    _check_own_folders(class_folders, root)
    for split, sub in layout.items():
        folder = root / sub
        paths, labels = [], []
        for label, c in enumerate(classes):
            files, n_other = (_image_files(folder / c) if (folder / c).is_dir() else ([], 0))
            ignored += n_other
            if not files and split == train_pool:
                raise _no_images(folder / c)
            paths += files
            labels += [label] * len(files)
        pools[split] = _Pool(labels=np.asarray(labels, dtype=np.int64), reader=_FileReader(paths))
    if ignored:
        log.info("%s: ignored %d file(s) that are not images", root, ignored)
    return pools, classes


# ----------------------------------------------------------------------------- image decoding

def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white (drawings, icons, sketches)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


MAX_UPLOAD_PIXELS = 40_000_000  # well above any photo; far below a decompression bomb


def decode_image(data: bytes, *, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """Bytes from elsewhere (an upload) → an RGB image, refusing what is not an image or is too
    large *before* decoding pixels (the header says the size). Raises ConfigError saying why."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ConfigError(f"the image is {width}×{height} pixels; at most {max_pixels:,} are accepted")
            img.draft(None, (1024, 1024))  # JPEG: decode no larger than needed
            return _to_rgb(img)
    except ConfigError:
        raise
    except UnidentifiedImageError as e:
        raise ConfigError("not an image in a format Pillow reads (PNG, JPEG, WebP, BMP, GIF, TIFF…)") from e
    except Image.DecompressionBombError as e:
        raise ConfigError(f"the image is too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ConfigError(f"the image data is damaged ({type(e).__name__}: {e})") from e


class _FileReader:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def open(self, i: int, size_hint: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            img.draft(None, (size_hint, size_hint))  # JPEG: decode at ≥ size_hint, far faster
            return _to_rgb(img)                       # forces the full decode (and its errors)

    def name(self, i: int) -> str:
        return self.paths[i]


class _TorchvisionReader:
    def __init__(self, ds):
        self.ds = ds

    def open(self, i: int, size_hint: int) -> Image.Image:
        img = self.ds[i][0]
        return _to_rgb(img if isinstance(img, Image.Image) else TF.to_pil_image(img))

    def name(self, i: int) -> str:
        files = getattr(self.ds, "_image_files", None) or getattr(self.ds, "_samples", None)
        if files and i < len(files):
            return str(files[i][0] if isinstance(files[i], tuple) else files[i])
        return f"{type(self.ds).__name__}[{i}]"


# ----------------------------------------------------------------------------- transforms

class _Normalise:
    """uint8 C×H×W (C = 1 or 3) -> float32 3×H×W, (x/255 - mean) / std."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.to(torch.float32).div_(255.0)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)  # grayscale: same plane in all three channels
        return (x - self.mean) / self.std


class _TensorTransform:
    """Paper augmentation on a small uint8 tensor already at `store` size (no PIL round trip)."""

    def __init__(self, size, store, ops, scale, norm):
        self.size, self.store, self.ops, self.scale, self.norm = size, store, tuple(ops), tuple(scale), norm

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        R, S = self.size, self.store
        if img.shape[-2:] != (S, S):  # kept at native size because pre-resizing was too big
            img = TF.resize(img, [S, S], antialias=True)
        if "random_resized_crop" in self.ops:
            i, j, h, w = RandomResizedCrop.get_params(img, self.scale, (3 / 4, 4 / 3))
            img = TF.resized_crop(img, i, j, h, w, [R, R], antialias=True)
        elif "random_crop" in self.ops and S > R:
            i, j = torch.randint(0, S - R + 1, (2,)).tolist()
            img = img[..., i:i + R, j:j + R]
        elif S > R:
            img = TF.center_crop(img, [R, R])
        if "horizontal_flip" in self.ops and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return self.norm(img)


class _PILTransform:
    def __init__(self, geometry, norm):
        self.geometry, self.norm = geometry, norm

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self.geometry(img)
        return self.norm(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))


def _store_size(size: int, aug: dict) -> int:
    """Side of the image before the final crop: R for 'resize', R/crop for 'center_crop'."""
    return size if aug["eval"] == "resize" else int(round(size / aug.get("crop", 0.875)))


def _pil_geometry(size: int, aug: dict, ops: tuple) -> v2.Compose:
    store = _store_size(size, aug)
    if "random_resized_crop" in ops:
        steps = [v2.RandomResizedCrop(size, scale=tuple(aug.get("scale", (0.08, 1.0))), antialias=True)]
    elif "random_crop" in ops:
        steps = [v2.Resize(store, antialias=True), v2.RandomCrop(size)]
    elif aug["eval"] == "resize":
        steps = [v2.Resize((size, size), antialias=True)]
    else:
        steps = [v2.Resize(store, antialias=True), v2.CenterCrop(size)]
    if "horizontal_flip" in ops:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def _resize_uint8(images: np.ndarray, side: int) -> torch.Tensor:
    """N×H×W[×C] uint8 -> N×C×side×side uint8, in chunks (square sources; others are squashed)."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    if t.shape[-2:] == (side, side):
        return t.contiguous()
    out = torch.empty((t.shape[0], t.shape[1], side, side), dtype=torch.uint8)
    for s in range(0, t.shape[0], 4096):
        chunk = t[s:s + 4096]
        try:  # torch's uint8 bilinear kernel: 2-3× faster than going through float
            out[s:s + 4096] = nnf.interpolate(chunk, size=(side, side), mode="bilinear",
                                              align_corners=False, antialias=True)
        except (RuntimeError, NotImplementedError):
            out[s:s + 4096] = nnf.interpolate(chunk.float(), size=(side, side), mode="bilinear",
                                              align_corners=False, antialias=True).round_().clamp_(0, 255)
    return out


# ----------------------------------------------------------------------------- datasets

class TensorImages(Dataset):
    """In-memory images (uint8 N×C×S×S, decoded and resized once); augmentation per sample."""

    def __init__(self, images, targets, transform, *, indices=None, pool="", classes=()):
        self.images, self.transform = images, transform
        self.targets = np.asarray(targets, dtype=np.int64)
        self.indices = np.arange(len(self.targets)) if indices is None else np.asarray(indices)
        self.pool, self.classes = pool, list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, k: int):
        return self.transform(self.images[k]), int(self.targets[k])


class ImageFiles(Dataset):
    """Lazily decoded images with the corrupt-image policy of this module (substitute and warn)."""

    def __init__(self, reader, indices, targets, transform, *, size_hint=256, pool="", classes=()):
        self.reader, self.transform, self.size_hint = reader, transform, size_hint
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.pool, self.classes = pool, list(classes)
        self.bad_files: set[str] = set()
        self._same_class = {int(c): np.flatnonzero(self.targets == c) for c in np.unique(self.targets)}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, k: int):
        label = int(self.targets[k])
        for j in self._candidates(k, label):  # k itself, then the class's next images in order
            name = self.reader.name(int(self.indices[j]))
            if name in self.bad_files:
                continue
            try:
                img = self.reader.open(int(self.indices[j]), self.size_hint)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError… on broken files
                self.bad_files.add(name)
                log.warning("Unreadable image %s (%s: %s); using another image of class %r instead.",
                            name, type(e).__name__, e, self._class_name(label))
                continue
            return self.transform(img), label
        where = os.path.dirname(self.reader.name(int(self.indices[k])))
        raise DatasetUnavailableError(
            f"No readable image of class {self._class_name(label)!r} is left in this split "
            f"(class folder {where}); unreadable: {sorted(self.bad_files)}.")

    def _candidates(self, k: int, label: int):
        same = self._same_class[label]
        start = int(np.searchsorted(same, k))
        return np.roll(same, -start)

    def _class_name(self, label: int) -> str:
        return self.classes[label] if label < len(self.classes) else str(label)


# ----------------------------------------------------------------------------- splits

def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _groups(labels: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
    """positions grouped by class (classes in increasing order, positions in given order)."""
    order = np.argsort(labels[positions], kind="stable")
    ps = positions[order]
    _, starts = np.unique(labels[ps], return_index=True)
    return np.split(ps, starts[1:]) if len(ps) else []


def _carve(labels, positions, fraction, rng) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: about `fraction` of each class (≥ 1 if the class has ≥ 2) is carved off."""
    keep, carved = [positions[:0]], [positions[:0]]
    for g in _groups(labels, positions):
        g = rng.permutation(g)
        k = min(max(int(fraction * len(g) + 0.5), 1), len(g) - 1) if len(g) >= 2 else 0
        carved.append(g[:k])
        keep.append(g[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(carved))


def _balanced(labels, positions, n, rng) -> np.ndarray:
    """n positions, class-balanced: classes take turns (in a seeded order) until n are taken."""
    if n >= len(positions):
        return positions
    groups = _groups(labels, positions)
    turn = rng.permutation(len(groups))
    members = np.concatenate([rng.permutation(g) for g in groups])
    rank = np.concatenate([np.arange(len(g)) * len(groups) + turn[i] for i, g in enumerate(groups)])
    return np.sort(members[np.argsort(rank, kind="stable")[:n]])


def _plan(m, pools, *, classes, val_fraction, seed, train_subset, test_subset=None
          ) -> dict[str, tuple[str, np.ndarray]]:
    """role -> (pool name, positions in that pool), refusing splits a run cannot use."""
    sp = m["splits"]
    train_pool = sp["train"]
    y = pools[train_pool].labels
    train = np.arange(len(y))
    if sp["test"] == "carve":
        train, test = _carve(y, train, sp.get("test_fraction", DEFAULT_TEST_FRACTION),
                             _rng(TEST_SEED, _STREAM_TEST))
        test = (train_pool, test)
    else:
        test = (sp["test"], np.arange(len(pools[sp["test"]].labels)))
    if sp["val"] == "carve":
        train, val = _carve(y, train, val_fraction, _rng(seed, _STREAM_VAL))
        val = (train_pool, val)
    else:
        val = (sp["val"], np.arange(len(pools[sp["val"]].labels)))
    _check_splits(m, pools, classes, {"train": (train_pool, train), "val": val, "test": test}, train_subset)
    if train_subset is not None:
        train = _balanced(y, train, train_subset, _rng(seed, _STREAM_TRAIN_SUBSET))
    if test_subset is not None:
        val = (val[0], _balanced(pools[val[0]].labels, val[1], test_subset, _rng(seed, _STREAM_VAL_SUBSET)))
        test = (test[0], _balanced(pools[test[0]].labels, test[1], test_subset,
                                   _rng(TEST_SEED, _STREAM_TEST_SUBSET)))
    return {"train": (train_pool, train), "val": val, "test": test}


def _check_splits(m, pools, classes, plan, train_subset) -> None:
    """What every dataset needs, checked where its splits are made (before the subsets): two
    classes at least, each with an image in train, val and test, and as many training images
    as ``train_subset`` asks for. Anything less trains "successfully" and means nothing."""
    if len(classes) < 2:
        raise ConfigError(f"{m['name']} has {len(classes)} class ({', '.join(map(repr, classes))}); a "
                          "classification task needs at least two classes.")
    carved = any(m["splits"][r] == "carve" for r in ("val", "test"))
    for role, (pool, positions) in plan.items():
        counts = np.bincount(pools[pool].labels[positions], minlength=len(classes))
        missing = [classes[i] for i in np.flatnonzero(counts == 0)]
        if missing:
            hint = " (carving val and test from train takes at least 3 images a class)" if carved else ""
            raise ConfigError(f"{m['name']}: class(es) {', '.join(map(repr, missing[:5]))} have no image in the "
                              f"{role} split; every class needs at least one image in train, val and test{hint}.")
    available = len(plan["train"][1])
    if train_subset is not None and train_subset > available:
        raise ConfigError(f"train_subset must be ≤ {available}, got {train_subset}: {m['name']} has {available} "
                          f"training images{' once val and test are carved out' if carved else ''} "
                          "(leave it unset to use them all).")


# ----------------------------------------------------------------------------- public API

def list_datasets(data_root: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """Every known dataset and whether it is on this machine now (no network is touched)."""
    root = Path(data_root).expanduser() if data_root else default_data_root()
    out = []
    for name, m in sorted(_manifests()[0].items()):
        src = next((s for s in m["sources"] if _available(s, m, root)), None)
        if src is not None:
            source = _describe(src, m, root)
        else:
            tv = next((s for s in m["sources"] if s["kind"] == "torchvision"), None)
            source = f"{_describe(tv, m, root)} (download: allow_download=True)" if tv else None
        out.append(DatasetInfo(name, m["title"], m["num_classes"], src is not None, source,
                               _how_to_get(m, root), m.get("benchmark", "")))
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
    pools, source_classes = _open_source(src, m, root, download)
    classes = _class_names(src, m, pools, source_classes)

    plan = _plan(m, pools, classes=classes, val_fraction=val_fraction, seed=seed, train_subset=train_subset,
                 test_subset=test_subset)
    norm, train_ops = _Normalise(mean, std), (tuple(m["augment"]["train"]) if augment else ())
    splits = {role: _make_split(pools[pool], pool, pos, size, m["augment"],
                                train_ops if role == "train" else (), norm, classes)
              for role, (pool, pos) in plan.items()}
    return DataSplits(splits["train"], splits["val"], splits["test"], list(classes), m["name"], m,
                      _describe(src, m, root) + (" (downloaded)" if download else ""))


def eval_transform(name_or_path: str | os.PathLike, resolution: int | None = None, *,
                   mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
                   std: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """The dataset's evaluation preprocessing for one PIL image of any mode → float 3×R×R:
    what the test split applies, so an image from elsewhere (an upload) is seen the same way.
    The default mean/std leave pixels in [0, 1], as the trainer feeds its models."""
    m = get_manifest(name_or_path)
    size = m["input"]["size"] if resolution is None else int(resolution)
    geometry = _pil_geometry(size, m["augment"], ())
    norm = _Normalise(mean, std)
    return lambda img: _PILTransform(geometry, norm)(_to_rgb(img))


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
    src = next((s for s in m["sources"] if _available(s, m, root)), None)
    if src is not None:
        return src, False
    tv = next((s for s in m["sources"] if s["kind"] == "torchvision"), None)
    if tv is not None and allow_download:
        return tv, True
    looked = "; ".join(_describe(s, m, root) for s in m["sources"])
    raise DatasetUnavailableError(
        f"{m['title']} ({m['name']}) is not on this machine (looked for: {looked}).\n"
        f"How to get it: {_how_to_get(m, root)}"
        + ("\nOnline? pass allow_download=True to let torchvision download it." if tv else ""))


def _make_split(pool: _Pool, pool_name, pos, size, aug, ops, norm, classes) -> Dataset:
    if pool.images is None:
        transform = _PILTransform(_pil_geometry(size, aug, ops), norm)
        return ImageFiles(pool.reader, pos, pool.labels[pos], transform, size_hint=2 * size,
                          pool=pool_name, classes=classes)
    store = _store_size(size, aug)
    channels = pool.images.shape[3] if pool.images.ndim == 4 else 1
    if len(pos) * channels * store * store <= _MAX_PRERESIZED_BYTES:
        images = _resize_uint8(pool.images[pos], store)  # once, so epochs pay only augmentation
    else:  # too big at the target size: keep native size, resize per sample
        images = torch.from_numpy(np.ascontiguousarray(pool.images[pos]))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    transform = _TensorTransform(size, store, ops, aug.get("scale", (0.08, 1.0)), norm)
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
