"""Image sets: in memory (uint8 tensors, decoded once) or streamed from files through DataLoader
workers; both answer the same questions (length, labels, shape, subsets, batches)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:
    from vpns_deploy.data.decode import ImageSource
    from vpns_deploy.data.geometry import Geometry


@dataclass(frozen=True)
class AugmentPolicy:
    """Training augmentation: a random crop (from a copy zero-padded by crop_pad, or a crop_size crop
    of a larger stored image) plus an optional horizontal flip. resize_side records the stored side."""

    crop_pad: int
    hflip: bool
    crop_size: int | None = None  # None: crop the stored size (pad-crop)
    resize_side: int | None = None  # large inputs: training images stored at this side (9/8 of the input)


def balanced_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a class-balanced random choice of n items (classes take turns)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    shuffled = labels[perm]
    # Rank of each item within its class in the shuffled order; taking the lowest ranks first
    # interleaves the classes, so every class gets n / C items (as far as it has them).
    order = torch.argsort(shuffled, stable=True)
    starts = torch.searchsorted(shuffled[order], shuffled[order], side="left")
    rank = torch.empty_like(shuffled)
    rank[order] = torch.arange(len(shuffled)) - starts
    chosen = perm[torch.argsort(rank * len(labels) + torch.arange(len(labels)), stable=True)[:n]]
    return torch.sort(chosen).values


def per_class_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of round(fraction * n_c) random items of every class c (class-balanced hold-out)."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        k = int(round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.sort(torch.cat(picked) if picked else torch.zeros(0, dtype=torch.int64)).values


def complement(n: int, idx: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    return torch.nonzero(keep).flatten()


@dataclass
class ImageSet:
    """Decoded images in memory. crop_to: stored images are larger (training storage of a large
    input) and the network sees their centre crop_to x crop_to."""

    images: torch.Tensor  # uint8, N x C x H x W (stored form)
    labels: torch.Tensor  # int64, N
    classes: list[str]
    crop_to: int | None = None

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
        """What the network sees: channels, height, width."""
        c, h, w = self.images.shape[1:]
        if self.crop_to is not None:
            h = w = self.crop_to
        return int(c), int(h), int(w)

    @property
    def stored_bytes(self) -> int:
        return self.images.numel()

    def select(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.crop_to)

    def subset(self, n: int | None, seed: int) -> "ImageSet":
        """A class-balanced random subset of n images (all of them when n is None or too large)."""
        if n is None or n >= len(self):
            return self
        return self.select(balanced_indices(self.labels, n, seed))

    def batch(self, start: int, stop: int | None = None) -> torch.Tensor:
        """uint8 N x C x H x W exactly as the network sees them, images start..stop."""
        from vpns_deploy.data.geometry import centre_crop

        return centre_crop(self.images[start:stop], self.crop_to)

    def head(self, n: int) -> "ImageSet":
        """The first n images, as seen by the network, in memory."""
        return ImageSet(self.batch(0, n).contiguous(), self.labels[:n], self.classes)


@dataclass
class StreamSet:
    """Images decoded on demand from their source (files) by DataLoader workers, never all held."""

    source: "ImageSource"
    labels: torch.Tensor
    classes: list[str]
    geometry: "Geometry"
    workers: int = 0
    native_hw: tuple[int, int] | None = None  # the images' own size when geometry.size is None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        side = self.geometry.view_side
        h, w = (side, side) if side is not None else (self.native_hw or (0, 0))
        return self.geometry.channels, int(h), int(w)

    def select(self, idx: torch.Tensor) -> "StreamSet":
        return StreamSet(self.source.select(idx), self.labels[idx], self.classes, self.geometry, self.workers,
                         self.native_hw)

    def subset(self, n: int | None, seed: int) -> "StreamSet":
        if n is None or n >= len(self):
            return self
        return self.select(balanced_indices(self.labels, n, seed))

    def batch(self, start: int, stop: int | None = None) -> torch.Tensor:
        """Decode images start..stop here (no workers): for small samples (export examples, parity)."""
        from vpns_deploy.data.loader import decode_view

        stop = len(self) if stop is None else min(stop, len(self))
        return torch.stack([decode_view(self, i) for i in range(start, stop)])

    def head(self, n: int) -> ImageSet:
        n = min(n, len(self))
        return ImageSet(self.batch(0, n), self.labels[:n], self.classes)


AnySet = Union[ImageSet, StreamSet]


@dataclass
class Splits:
    """What a data spec resolves to: train, test and (optionally) validation sets, how to augment,
    and where it came from. val is carved from the training split (class-balanced, fixed seed) and
    judges every choice and every epoch; test is measured only at the end of a stage."""

    train: AnySet
    test: AnySet
    augment: AugmentPolicy
    spec: str
    fingerprint: str  # sha256 of the source file, or a description of the source
    val: AnySet | None = None
    storage: str = "memory"  # "memory": decoded once into RAM; "stream": decoded per batch by workers
    details: dict = field(default_factory=dict)  # geometry, workers, cache decision: for the manifest

    @property
    def num_classes(self) -> int:
        return self.train.num_classes
