"""Where every image's pixels go: the stored size, the evaluation crop and the training augmentation.

One record (Geometry) says it for a split, so the in-memory cache and the streaming workers produce
the same images and the same augmentation distribution.

Sizes. `size` None keeps the data's own size (the lab regime: CIFAR at 32 px, today's behaviour);
a number is the square side the network trains and exports at. Evaluation (test split) resizes the
shorter side to size / crop_pct and centre-crops `size` (timm's convention). Training images are
stored at `train_side(size)`:
- small inputs (<= SMALL_INPUT_MAX px): stored at `size`, augmented by a random crop from a copy
  zero-padded by side // 8 plus a horizontal flip (the reference's CIFAR augmentation);
- larger inputs: stored at 9/8 of the side (shorter side resized, centre square), augmented by a
  random `size` crop plus flip: the VPNs paper's own recipe for upsampled CIFAR (Resize 9/8 +
  RandomCrop + flip, shared/docs/VPNS.md). We prefer it to RandomResizedCrop because VPNs stage 1
  learns masks on frozen pretrained weights over a few epochs, where RRC's 8-100 % area crops are
  an ImageNet-from-scratch regularizer the reference never used; it also lets the in-memory cache
  keep its fast batch-level crop. The un-augmented view of a training or validation image is its
  centre `size` crop (a crop ratio of 8/9 at large sizes, 1.0 at small ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vpns_deploy.config import LARGE_RESIZE_RATIO, SMALL_INPUT_MAX
from vpns_deploy.data.dataset import AugmentPolicy
from vpns_deploy.errors import UserError

RESAMPLING = ("nearest", "bilinear", "bicubic")


def train_side(size: int) -> int:
    """The side training images are stored at for a network input of `size` px."""
    return size if size <= SMALL_INPUT_MAX else round(size * LARGE_RESIZE_RATIO)


def policy_for(size: int, hflip: bool = True) -> AugmentPolicy:
    """The augmentation for an input side (see the module docstring)."""
    if size <= SMALL_INPUT_MAX:
        return AugmentPolicy(crop_pad=max(1, size // 8), hflip=hflip)
    return AugmentPolicy(crop_pad=0, hflip=hflip, crop_size=size, resize_side=train_side(size))


def _mode(name: str):
    from torchvision.transforms import InterpolationMode

    if name not in RESAMPLING:
        raise UserError(f"unknown interpolation {name!r}", f"use one of {', '.join(RESAMPLING)}")
    return InterpolationMode(name)


def resize_centre_crop(img: torch.Tensor, shorter: int, side: int, interpolation: str) -> torch.Tensor:
    """uint8 C x H x W -> shorter side resized to `shorter` (antialiased), centre `side` x `side` crop."""
    import torchvision.transforms.v2.functional as TF

    h, w = img.shape[-2:]
    if min(h, w) != shorter:
        img = TF.resize(img, [shorter], interpolation=_mode(interpolation), antialias=True)
    if tuple(img.shape[-2:]) != (side, side):
        img = TF.center_crop(img, [side, side])
    return img


def centre_crop(images: torch.Tensor, side: int | None) -> torch.Tensor:
    """Centre side x side crop of an N x C x H x W (or C x H x W) tensor; unchanged when side is None."""
    if side is None or tuple(images.shape[-2:]) == (side, side):
        return images
    h, w = images.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]


@dataclass(frozen=True)
class Geometry:
    """How one split's images are stored and viewed. role "train": stored for augmentation (and
    centre-cropped for the un-augmented view); role "eval": stored exactly as evaluated."""

    channels: int
    size: int | None
    role: str  # "train" | "eval"
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    @property
    def stored_side(self) -> int | None:
        if self.size is None:
            return None
        return train_side(self.size) if self.role == "train" else self.size

    @property
    def view_side(self) -> int | None:
        """The side of what the network sees (None: the data's own size)."""
        return self.size

    def store(self, img: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 C x H x W at its own size -> the stored form."""
        if self.size is None:
            return img
        if self.role == "train":
            side = train_side(self.size)
            return resize_centre_crop(img, side, side, self.interpolation)
        return resize_centre_crop(img, round(self.size / self.crop_pct), self.size, self.interpolation)

    def view(self, stored: torch.Tensor) -> torch.Tensor:
        """Stored form -> the un-augmented network input (centre crop of a larger stored train image)."""
        return centre_crop(stored, self.size)

    def stored_bytes(self, count: int, native_hw: tuple[int, int] | None) -> int:
        """Bytes `count` stored uint8 images take (native_hw: their own size when size is None)."""
        if self.size is None:
            h, w = native_hw or (0, 0)
        else:
            h = w = self.stored_side or 0
        return count * self.channels * h * w

    def describe(self) -> dict:
        return {"channels": self.channels, "size": self.size, "stored_side": self.stored_side,
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "role": self.role}


def sample_augment(stored: torch.Tensor, policy: AugmentPolicy, seed: int) -> torch.Tensor:
    """One stored image -> one augmented view with torchvision.transforms.v2, drawn from `seed` alone
    (so the result never depends on which worker or how many workers produced it)."""
    from torchvision.transforms import v2

    ops: list = []
    h, w = stored.shape[-2:]
    out = (policy.crop_size, policy.crop_size) if policy.crop_size else (h, w)
    if policy.crop_pad > 0 or out != (h, w):
        ops.append(v2.RandomCrop(out, padding=policy.crop_pad or None))
    if policy.hflip:
        ops.append(v2.RandomHorizontalFlip(0.5))
    if not ops:
        return stored
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return v2.Compose(ops)(stored)
