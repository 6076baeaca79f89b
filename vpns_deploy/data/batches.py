"""Batch iteration. In-memory sets: slices of uint8 tensors, augmented in torch on the batch's device
(fast). Streamed sets: DataLoader workers decode and augment (data/loader.py). Both draw their
order and augmentation from the caller's generator, so runs repeat and resume exactly."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vpns_deploy.data.dataset import AnySet, AugmentPolicy, ImageSet
from vpns_deploy.data.geometry import centre_crop
from vpns_deploy.data.heap import steady_heap

SEED_RANGE = 2**62  # per-image augmentation seeds of streamed sets


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float [0,1]: the first step of the deployed preprocessing too."""
    return images.float().div_(255.0)


@dataclass
class AugmentDraw:
    """The random draws of `augment` for n samples (crop offsets, flips), so they can be made for a
    whole global batch and applied to one process's share of it (data/sharded.py)."""

    oy: torch.Tensor | None
    ox: torch.Tensor | None
    flip: torch.Tensor | None

    def take(self, idx: torch.Tensor) -> "AugmentDraw":
        return AugmentDraw(*(None if t is None else t[idx] for t in (self.oy, self.ox, self.flip)))

    @staticmethod
    def cat(draws: list["AugmentDraw"]) -> "AugmentDraw":
        parts = [[getattr(d, k) for d in draws] for k in ("oy", "ox", "flip")]
        return AugmentDraw(*(None if not p or p[0] is None else torch.cat(p) for p in parts))


def draw_augment(n: int, hw: tuple[int, int], policy: AugmentPolicy, gen: torch.Generator) -> AugmentDraw:
    """The draws for n samples of h x w, in the order `augment` has always made them."""
    h, w = hw
    p = policy.crop_pad
    oh, ow = (policy.crop_size, policy.crop_size) if policy.crop_size else (h, w)
    oy = ox = flip = None
    if p > 0 or (oh, ow) != (h, w):
        oy = torch.randint(0, h + 2 * p - oh + 1, (n,), generator=gen)
        ox = torch.randint(0, w + 2 * p - ow + 1, (n,), generator=gen)
    if policy.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
    return AugmentDraw(oy, ox, flip)


def apply_augment(x: torch.Tensor, policy: AugmentPolicy, draw: AugmentDraw) -> torch.Tensor:
    """Random crop (from a zero-padded copy, or a crop_size window of a larger image) plus optional
    horizontal flip, per sample, with the given draws. Any dtype: training runs it on the uint8 batch,
    before the float conversion (a pure rearrangement of pixels plus zero padding, so the result is
    bit-identical to augmenting the float batch, with a quarter of the bytes to move). The crop and
    the flip are two gathers (rows, then columns with the flip folded into the column order), each
    writing its output in place of a pad + fancy-index + permute + copy + flip + where chain."""
    n, c, h, w = x.shape
    p = policy.crop_pad
    oh, ow = (policy.crop_size, policy.crop_size) if policy.crop_size else (h, w)
    crop = draw.oy is not None and draw.ox is not None
    if not crop and draw.flip is None:
        return x
    if crop:
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p > 0 else x
        rows = draw.oy.to(x.device)[:, None] + torch.arange(oh, device=x.device)  # n x oh
        x = padded.gather(2, rows[:, None, :, None].expand(n, c, oh, padded.shape[3]))
        left = draw.ox.to(x.device)[:, None]
    else:
        left = torch.zeros((n, 1), dtype=torch.int64, device=x.device)
    j = torch.arange(ow, device=x.device)
    cols = left + (torch.where(draw.flip.to(x.device)[:, None], ow - 1 - j, j) if draw.flip is not None else j)
    return x.gather(3, cols[:, None, None, :].expand(n, c, oh, ow))


def augment(x: torch.Tensor, policy: AugmentPolicy, gen: torch.Generator) -> torch.Tensor:
    """Random crop (from a zero-padded copy, or a crop_size window of a larger image) plus optional
    horizontal flip, per sample."""
    return apply_augment(x, policy, draw_augment(x.shape[0], (x.shape[2], x.shape[3]), policy, gen))


def train_batches(
    data: AnySet,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    policy: AugmentPolicy | None,
    workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of float [0,1] batches; augmented when a policy is given (else the
    un-augmented view: a larger stored image's centre crop)."""
    steady_heap()  # the steps that consume these batches keep their memory mapped (data/heap.py)
    perm = torch.randperm(len(data), generator=gen)
    if isinstance(data, ImageSet):
        cuda = device.type == "cuda"
        for start in range(0, len(data), batch_size):
            idx = perm[start : start + batch_size]
            x = data.images[idx].to(device, non_blocking=cuda)  # uint8: augmented before the float conversion
            x = augment(x, policy, gen) if policy is not None else centre_crop(x, data.crop_to).contiguous()
            yield to_unit_float(x), data.labels[idx].to(device, non_blocking=cuda)
        return
    from vpns_deploy.data.loader import NO_AUGMENT, stream_batches

    # Every draw is made here, up front: the generator's state after the epoch never depends on workers.
    seeds = (torch.randint(0, SEED_RANGE, (len(data),), generator=gen) if policy is not None
             else torch.full((len(data),), NO_AUGMENT))
    order = list(zip(perm.tolist(), seeds.tolist()))
    for x, y in stream_batches(data, order, batch_size, device, policy, workers):
        yield to_unit_float(x), y


def uint8_batches(data: AnySet, batch_size: int, device: torch.device | None = None,
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The set in order, uint8 N x C x H x W as the network sees it, with labels (CPU by default)."""
    device = device or torch.device("cpu")
    if isinstance(data, ImageSet):
        for start in range(0, len(data), batch_size):
            yield data.batch(start, start + batch_size).to(device), data.labels[start : start + batch_size].to(device)
        return
    from vpns_deploy.data.loader import NO_AUGMENT, stream_batches

    yield from stream_batches(data, [(i, NO_AUGMENT) for i in range(len(data))], batch_size, device)


def eval_batches(
    data: AnySet, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The set in order as float [0,1] batches on `device`."""
    for x, y in uint8_batches(data, batch_size, device):
        yield to_unit_float(x), y


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
