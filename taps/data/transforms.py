"""From uint8 source images to the float tensors a model sees: normalisation, the paper's
augmentation on small pre-resized tensors (array sources) or through PIL (lazily decoded files),
and the one-off resize of a whole array source to its stored size."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalise:
    """uint8 C×H×W (C = 1 or 3) -> float32 3×H×W, (x/255 - mean) / std."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = img.to(torch.float32).div_(255.0)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)  # grayscale: same plane in all three channels
        return (x - self.mean) / self.std


class TensorTransform:
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


class PILTransform:
    def __init__(self, geometry, norm):
        self.geometry, self.norm = geometry, norm

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self.geometry(img)
        return self.norm(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))


def store_size(size: int, aug: dict) -> int:
    """Side of the image before the final crop: R for 'resize', R/crop for 'center_crop'."""
    return size if aug["eval"] == "resize" else int(round(size / aug.get("crop", 0.875)))


def pil_geometry(size: int, aug: dict, ops: tuple) -> v2.Compose:
    store = store_size(size, aug)
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


def resize_uint8(images: np.ndarray, side: int) -> torch.Tensor:
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
