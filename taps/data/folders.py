"""Image folders as a source: class folders indexed by a directory walk (nothing is decoded at
load time), image files chosen by extension, and links never followed out of their folder."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .images import FileReader, Pool

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})


def class_dirs(folder: Path) -> list[str]:
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


def open_folder(root: Path, layout: dict, train_pool: str):
    """Index an image folder: classes are the train folder's sub-folders (sorted)."""
    train_dir = root / layout[train_pool]
    _check_own_folders([root / sub for sub in layout.values()], root)
    classes = class_dirs(train_dir)
    if not classes:
        raise ConfigError(f"{train_dir} has no class sub-folders: expected <folder>/<class>/<images>.")
    pools, ignored, class_folders = {}, 0, []
    for split, sub in layout.items():
        folder = root / sub
        unknown = sorted(set(class_dirs(folder)) - set(classes))
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
        pools[split] = Pool(labels=np.asarray(labels, dtype=np.int64), reader=FileReader(paths))
    if ignored:
        log.info("%s: ignored %d file(s) that are not images", root, ignored)
    return pools, classes

