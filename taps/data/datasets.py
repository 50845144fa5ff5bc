"""The datasets a split is made of: in-memory images augmented per sample, and lazily decoded
image files with the corrupt-image policy (substitute and warn; see ``taps.data``)."""
from __future__ import annotations

import logging
import os

import numpy as np
from torch.utils.data import Dataset

from ..errors import DatasetUnavailableError

log = logging.getLogger(__name__)


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
    """Lazily decoded images with the corrupt-image policy of ``taps.data`` (substitute and warn)."""

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
