"""Raw pixels: decode any common photo file to uint8 C x H x W with the model's channel count.

Grayscale, palette, RGBA/LA, CMYK and 16-bit images all arrive as 1 or 3 uint8 channels, because a
user's folder is never uniform. A file that cannot be decoded is a one-line UserError naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vpns_deploy.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# ITU-R 601-2 luma, the weights PIL's convert("L") uses: the same grey from files and from tensors.
LUMA = (0.299, 0.587, 0.114)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _to_8bit(im):
    """16/32-bit grey (PNG "I;16", "I") -> 8-bit "L" by scaling, not clipping (PIL's convert clips)."""
    from PIL import Image

    arr = np.asarray(im)
    top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def decode_image(path: Path, channels: int) -> torch.Tensor:
    """uint8 channels x H x W from an image file; EXIF orientation applied; alpha dropped."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":
                im = _to_8bit(im)
            elif im.mode in ("P", "PA") or "transparency" in im.info:
                im = im.convert("RGBA")  # palette and tRNS colours resolved before dropping alpha
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.array(im)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot decode image {path} ({exc.__class__.__name__}: {exc})",
                        "remove or replace that file") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot decode image {path} ({exc.__class__.__name__}: {exc})",
                        "remove or replace that file") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N x) C x H x W with 1 or 3 channels -> the same with `channels` (grey repeated, or luma)."""
    c = images.shape[-3]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=torch.float32).view(3, 1, 1)
        return (images.float() * w).sum(-3, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise UserError(f"cannot convert {c}-channel images to {channels} channels",
                    "use a model that takes 1 or 3 channels")


class ImageSource:
    """The undecoded images of one split: read(i) gives image i at its own size."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int, channels: int) -> torch.Tensor:
        raise NotImplementedError

    def name(self, i: int) -> str:
        return f"image {i}"

    def select(self, idx: torch.Tensor) -> "ImageSource":
        raise NotImplementedError


@dataclass
class FileSource(ImageSource):
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int, channels: int) -> torch.Tensor:
        return decode_image(Path(self.paths[i]), channels)

    def name(self, i: int) -> str:
        return self.paths[i]

    def select(self, idx: torch.Tensor) -> "FileSource":
        return FileSource([self.paths[int(i)] for i in idx])


@dataclass
class TensorSource(ImageSource):
    """Images already held as uint8 N x C x H x W (digits, CIFAR python batches)."""

    images: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def read(self, i: int, channels: int) -> torch.Tensor:
        return to_channels(self.images[i], channels)

    def select(self, idx: torch.Tensor) -> "TensorSource":
        return TensorSource(self.images[idx])
