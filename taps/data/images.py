"""Source images before any transform: a source split's labels with its pixels or a lazy reader
(:class:`Pool`), decoding files and torchvision samples to RGB, and decoding untrusted bytes (an
upload) with the size checked before any pixel is decoded."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError

MAX_UPLOAD_PIXELS = 40_000_000  # well above any photo; far below a decompression bomb


@dataclass
class Pool:
    """One official split of a source: labels plus either a uint8 array or a lazy reader."""
    labels: np.ndarray
    images: np.ndarray | None = None   # N×H×W or N×H×W×C uint8
    reader: Any = None                 # .open(i, size_hint) -> PIL image, .name(i) -> str


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white (drawings, icons, sketches)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """Bytes from elsewhere (an upload) → an RGB image, refusing what is not an image or is too
    large *before* decoding pixels (the header says the size). Raises ConfigError saying why."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ConfigError(f"the image is {width}×{height} pixels; at most {max_pixels:,} are accepted")
            img.draft(None, (1024, 1024))  # JPEG: decode no larger than needed
            return to_rgb(img)
    except ConfigError:
        raise
    except UnidentifiedImageError as e:
        raise ConfigError("not an image in a format Pillow reads (PNG, JPEG, WebP, BMP, GIF, TIFF…)") from e
    except Image.DecompressionBombError as e:
        raise ConfigError(f"the image is too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ConfigError(f"the image data is damaged ({type(e).__name__}: {e})") from e


class FileReader:
    def __init__(self, paths: list[str]):
        self.paths = paths

    def open(self, i: int, size_hint: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            img.draft(None, (size_hint, size_hint))  # JPEG: decode at ≥ size_hint, far faster
            return to_rgb(img)                        # forces the full decode (and its errors)

    def name(self, i: int) -> str:
        return self.paths[i]


class TorchvisionReader:
    def __init__(self, ds):
        self.ds = ds

    def open(self, i: int, size_hint: int) -> Image.Image:
        img = self.ds[i][0]
        return to_rgb(img if isinstance(img, Image.Image) else TF.to_pil_image(img))

    def name(self, i: int) -> str:
        files = getattr(self.ds, "_image_files", None) or getattr(self.ds, "_samples", None)
        if files and i < len(files):
            return str(files[i][0] if isinstance(files[i], tuple) else files[i])
        return f"{type(self.ds).__name__}[{i}]"
