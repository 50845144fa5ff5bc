"""Handwriting-style character images, drawn from stroke centre-lines: the offline task whose
domain is far from ImageNet (white strokes on black, no texture, no colour, classes that differ
by one stroke's length: 未/末, 土/士, 大/太/犬).

The npm package ``hanzi-writer-data`` ships, per character, the centre-lines ("medians") of its
strokes in a 1024-unit box (y up), derived from the Arphic PL fonts via Make Me a Hanzi. Each
image draws one character's medians with per-stroke offsets, point jitter, shear, rotation,
scale, translation and stroke width, 4× supersampled, white on black: unlimited, Omniglot-like
writing. Generation is seeded per (split, class), so every split is a fixed set of images, the
splits never share an image, and changing one split's size moves no other image. Drawing the
default task takes about half a minute on a slow 2-core CPU, once: the result is cached in
``$TAPS_CACHE_DIR/glyphs`` (default ``~/.cache/taps/glyphs``), keyed by everything that shapes it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import sys
import tarfile
from pathlib import Path

import os

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DatasetUnavailableError
from ..fileio import atomic_write

log = logging.getLogger(__name__)

RENDER_VERSION = 1  # bump when drawing changes, so caches made by older code are not reused
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # one random stream per split: never the same image
_BOX = 1024  # the medians' coordinate box
_BASELINE = 900  # hanzi-writer-data's y axis points up from 900 units below the top


def cache_dir() -> Path:
    return Path(os.environ.get("TAPS_CACHE_DIR") or "~/.cache/taps").expanduser() / "glyphs"


def tarball_locations(src: dict, data_root: Path) -> list[Path]:
    """Where the package's tarball may be: the environment's data folder (``make setup`` puts it
    there with ``npm pack``), then the data root."""
    return [Path(sys.prefix) / "share" / "taps-data" / src["file"], data_root / src["file"]]


def find_tarball(src: dict, data_root: Path) -> Path | None:
    return next((p for p in tarball_locations(src, data_root) if p.is_file()), None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_medians(tarball: Path, chars: list[str], sha256: str | None = None) -> list[list]:
    """Each character's stroke medians from the package tarball, without unpacking it (a few
    seconds: the whole archive is scanned; kept per process, so a second split set costs nothing)."""
    return _read_medians(str(tarball), tarball.stat().st_mtime_ns, tuple(chars), sha256)


@functools.lru_cache(maxsize=4)
def _read_medians(path: str, _mtime: int, chars: tuple[str, ...], sha256: str | None) -> list[list]:
    tarball = Path(path)
    if sha256 and _sha256(tarball) != sha256:
        raise DatasetUnavailableError(
            f"{tarball} is damaged or not the expected release (sha256 differs from the manifest's "
            f"{sha256[:12]}…); delete it and run `make setup` again.")
    wanted = {f"package/{c}.json": c for c in chars}
    found: dict[str, list] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                char = wanted.get(member.name)
                if char is not None and member.isfile():
                    found[char] = json.loads(tar.extractfile(member).read())["medians"]
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as e:
        raise DatasetUnavailableError(f"cannot read {tarball} ({type(e).__name__}: {e}); delete it "
                                      "and run `make setup` again.") from e
    missing = [c for c in chars if c not in found]
    if missing:
        raise DatasetUnavailableError(f"{tarball} has no stroke data for {''.join(missing)}")
    return [found[c] for c in chars]


def render(medians: list, rng: np.random.Generator, size: int, supersample: int = 4) -> np.ndarray:
    """One handwritten-style drawing of a character: uint8 size×size, white strokes on black."""
    side = size * supersample
    im = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(im)
    angle, shear = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)
    scale = rng.uniform(0.75, 1.0)
    tx, ty = rng.uniform(-0.08, 0.08, size=2) * side
    width = max(1, round(rng.uniform(0.03, 0.07) * side))
    cos, sin = math.cos(angle), math.sin(angle)
    for stroke in medians:
        pts = np.asarray(stroke, dtype=np.float64)
        pts = pts + rng.normal(0, 25, size=2) + rng.normal(0, 6, size=pts.shape)  # stroke offset, jitter
        x = (pts[:, 0] - _BOX / 2) / _BOX
        y = (_BASELINE - pts[:, 1] - _BOX / 2) / _BOX
        x = x + shear * y
        x, y = cos * x - sin * y, sin * x + cos * y
        xy = np.stack([side / 2 + scale * side * x + tx, side / 2 + scale * side * y + ty], axis=1)
        draw.line([tuple(p) for p in xy], fill=255, width=width, joint="curve")
    return np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def render_split(all_medians: list[list], per_class: int, split: str, seed: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` drawings of every class, class after class: (N×size×size uint8, N labels)."""
    images = np.empty((len(all_medians) * per_class, size, size), dtype=np.uint8)
    for label, medians in enumerate(all_medians):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split], label])
        for k in range(per_class):
            images[label * per_class + k] = render(medians, rng, size)
    labels = np.repeat(np.arange(len(all_medians), dtype=np.int64), per_class)
    return images, labels


def glyph_splits(src: dict, chars: list[str], data_root: Path, cache: Path | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split the source names, from the cache folder when they were drawn before with the
    same settings, else drawn now (and cached when the folder is writable)."""
    tarball = find_tarball(src, data_root)
    if tarball is None:
        looked = ", ".join(map(str, tarball_locations(src, data_root)))
        raise DatasetUnavailableError(f"{src['package']} {src['version']} not found (looked in {looked})")
    settings = {"version": RENDER_VERSION, "package": src["package"], "release": src["version"],
                "chars": "".join(chars), "splits": src["splits"], "seed": src["seed"], "size": src["image_size"]}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache = (cache or cache_dir()) / f"{src['package']}-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in src["splits"]}
        except (OSError, ValueError, KeyError, EOFError) as e:
            log.warning("Ignoring the damaged glyph cache %s (%s); rendering again.", cache, e)
    all_medians = read_medians(tarball, chars, src.get("sha256"))
    out = {split: render_split(all_medians, n, split, src["seed"], src["image_size"])
           for split, n in src["splits"].items()}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{part}": a for s, (images, labels) in out.items()
                  for part, a in (("images", images), ("labels", labels))}
        atomic_write(cache, lambda fh: np.savez(fh, **arrays), concurrent_writers=True)
    except OSError as e:  # a read-only cache folder: draw again next time
        log.warning("Could not cache the rendered glyphs in %s (%s).", cache, e)
    return out
