"""In-memory image sets: uint8 NCHW tensors plus labels, with subsetting and augmentation policy."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentPolicy:
    """Training augmentation: random crop from a zero-padded image, optional horizontal flip."""

    crop_pad: int
    hflip: bool


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, n: int | None, seed: int) -> "ImageSet":
        """A class-balanced random subset of n images (all of them when n is None or too large)."""
        if n is None or n >= len(self):
            return self
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=gen)
        labels = self.labels[perm]
        # Rank of each image within its class in the shuffled order; taking the lowest ranks first
        # interleaves the classes, so every class gets n / C images (as far as it has them).
        order = torch.argsort(labels, stable=True)
        starts = torch.searchsorted(labels[order], labels[order], side="left")
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(len(labels)) - starts
        chosen = perm[torch.argsort(rank * len(self) + torch.arange(len(self)), stable=True)[:n]]
        chosen, _ = torch.sort(chosen)
        return ImageSet(self.images[chosen], self.labels[chosen], self.classes)


@dataclass
class Splits:
    """What a data spec resolves to: train and test sets, how to augment, and where it came from."""

    train: ImageSet
    test: ImageSet
    augment: AugmentPolicy
    spec: str
    fingerprint: str  # sha256 of the source file, or a description of the source

    @property
    def num_classes(self) -> int:
        return self.train.num_classes
