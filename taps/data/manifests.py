"""Dataset manifests: the format of ``data_manifests/<name>.toml``, its validation, lookup by name
or alias (re-read when a file changes), and the manifest made up for a folder of images."""
from __future__ import annotations

import copy
import difflib
import functools
import os
import sys
from pathlib import Path

from ..errors import ConfigError, DatasetUnavailableError, UnknownDatasetError
from .folders import class_dirs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REQUIRED_FIELDS = ("name", "title", "num_classes", "sources", "splits", "input", "augment",
                   "license", "homepage", "how_to_get")
# Each source kind and the fields a manifest must give it.
SOURCE_FIELDS = {"debian-idx": ("path", "files"), "sklearn": ("loader",),
                 "torchvision": ("class", "marker", "splits"), "imagefolder": ("path",),
                 "stroke-glyphs": ("package", "version", "file", "splits", "seed", "image_size")}
SOURCE_KINDS = tuple(SOURCE_FIELDS)
TRAIN_OPS = ("random_resized_crop", "random_crop", "horizontal_flip")
EVAL_MODES = ("resize", "center_crop")  # resize: whole image to R×R; center_crop: shorter side R/crop
DEFAULT_TEST_FRACTION = 0.2


def manifest_dir() -> Path:
    return Path(os.environ.get("TAPS_MANIFEST_DIR")
                or Path(__file__).resolve().parents[2] / "data_manifests")


def default_data_root() -> Path:
    """Where torchvision downloads and image folders live: $TAPS_DATA_ROOT or ~/.cache/taps/data."""
    return Path(os.environ.get("TAPS_DATA_ROOT") or "~/.cache/taps/data").expanduser()


def how_to_get(m: dict, data_root: Path) -> str:
    return m["how_to_get"].strip().replace("<data_root>", str(data_root))


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
        need = SOURCE_FIELDS.get(kind)
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


def known_manifests() -> dict[str, dict]:
    """name -> manifest of every dataset in the manifest folder (shared: do not modify)."""
    return _parse_manifests(_stamp())[0]


def get_manifest(name: str | os.PathLike) -> dict:
    """The manifest of a known dataset (by name or alias), or one made up for a folder of images."""
    text = os.fspath(name)
    if not text.strip():
        raise UnknownDatasetError("Empty dataset name; pass a known name or a folder path.")
    is_pathlike = isinstance(name, os.PathLike) or "/" in text or os.sep in text or text[:1] in "~."
    if not is_pathlike:
        manifests, lookup = _parse_manifests(_stamp())
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
    classes = class_dirs(root / layout[train_pool])
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
