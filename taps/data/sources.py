"""Where a dataset's pixels come from, one function per source kind (Debian IDX files,
scikit-learn, torchvision, an image folder, stroke-drawn glyphs): whether a source is on this
machine (no network touched), how to describe it, and opening it as pools (official splits)."""
from __future__ import annotations

import functools
import importlib.util
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from . import glyphs
from ..errors import ConfigError, DatasetUnavailableError
from .folders import open_folder
from .images import Pool, TorchvisionReader
from .manifests import how_to_get

log = logging.getLogger(__name__)


def _source_root(src: dict, m: dict, data_root: Path) -> Path:
    if src["kind"] == "torchvision":
        return data_root / src.get("root", m["name"])
    path = Path(src["path"]).expanduser()
    return path if path.is_absolute() else data_root / path


def available(src: dict, m: dict, data_root: Path) -> bool:
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


def describe(src: dict, m: dict, data_root: Path) -> str:
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


def open_source(src: dict, m: dict, data_root: Path, download: bool):
    """Pools of one source plus the class names it knows (None if it knows none)."""
    kind = src["kind"]
    if kind == "debian-idx":
        base = Path(src["path"])
        return {split: Pool(labels=read_idx(base / lab).astype(np.int64), images=read_idx(base / img))
                for split, (img, lab) in src["files"].items()}, None
    if kind == "sklearn":
        from sklearn import datasets
        bunch = getattr(datasets, src["loader"])()
        images = np.asarray(bunch.images, dtype=np.float64)
        images = np.round(images * (255.0 / max(images.max(), 1e-12))).astype(np.uint8)  # digits: 0..16
        names = [str(n) for n in getattr(bunch, "target_names", [])] or None
        return {"all": Pool(labels=np.asarray(bunch.target, dtype=np.int64), images=images)}, names
    if kind == "torchvision":
        return _open_torchvision(src, m, data_root, download)
    if kind == "stroke-glyphs":
        return {split: Pool(labels=labels, images=images)
                for split, (images, labels) in glyphs.glyph_splits(src, m["classes"], data_root).items()}, None
    return open_folder(_source_root(src, m, data_root), src.get("splits") or {"all": ""},
                        m["splits"]["train"])


def read_idx(path: Path) -> np.ndarray:
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
                f"How to get it: {how_to_get(m, data_root)}") from e
        labels = _tv_labels(ds)
        data = getattr(ds, "data", None)
        data = data.numpy() if isinstance(data, torch.Tensor) else data
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim in (3, 4):
            if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
                data = data.transpose(0, 2, 3, 1)  # SVHN keeps N×C×H×W
            pools[split] = Pool(labels=labels, images=data)
        else:
            pools[split] = Pool(labels=labels, reader=TorchvisionReader(ds))
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


def class_names(src: dict, m: dict, pools: dict, source_classes) -> list[str]:
    """The class names of an opened source: a folder's own, else the manifest's, the source's or
    the label numbers; refused when a label has no name."""
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
