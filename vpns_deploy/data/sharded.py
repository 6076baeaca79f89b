"""One process's share of a training epoch when `compress` runs under torchrun (W processes).

Every process draws the epoch exactly as a single process would (the permutation, then the
augmentation of every global batch, from the stream's generator), so the generators stay identical
on every rank: the checkpoint rank 0 saves resumes every rank, and W processes at global batch B see
the very images and augmentations of one process at batch B. `DistributedSampler` (shuffle off: the
shuffle is the stream's own) then deals rank r the positions r, r + W, ... of that order, padded to a
multiple of W, so step k of rank r is its share of global batch k and every rank runs the same number
of steps. Only the draws are global; each rank decodes, augments and moves its own images alone.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from vpns_deploy.data.batches import SEED_RANGE, AugmentDraw, apply_augment, draw_augment, to_unit_float
from vpns_deploy.data.dataset import AnySet, AugmentPolicy, ImageSet
from vpns_deploy.data.geometry import centre_crop
from vpns_deploy.data.heap import steady_heap


def rank_positions(n: int, world: int, rank: int) -> list[int]:
    """Positions in the global order that rank `rank` of `world` trains on, in its order."""
    return list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=False))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sharded_train_batches(
    data: AnySet, batch_size: int, gen: torch.Generator, device: torch.device, policy: AugmentPolicy | None,
    workers: int | None, world: int, rank: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Rank `rank`'s batches (batch_size // world images each) of one epoch of global batch batch_size."""
    steady_heap()  # as train_batches (data/heap.py)
    local = batch_size // world
    n = len(data)
    perm = torch.randperm(n, generator=gen)
    mine = rank_positions(n, world, rank)
    if isinstance(data, ImageSet):
        draws = None
        if policy is not None:  # per global batch, as batches.train_batches draws them
            hw = tuple(data.images.shape[-2:])
            draws = AugmentDraw.cat([draw_augment(min(batch_size, n - s), hw, policy, gen)
                                     for s in range(0, n, batch_size)])
        cuda = device.type == "cuda"
        for pos in _chunks(mine, local):
            where = torch.tensor(pos)
            idx = perm[where]
            x = data.images[idx].to(device, non_blocking=cuda)  # uint8: augmented before the float conversion
            x = (apply_augment(x, policy, draws.take(where)) if draws is not None and policy is not None
                 else centre_crop(x, data.crop_to).contiguous())
            yield to_unit_float(x), data.labels[idx].to(device, non_blocking=cuda)
        return
    from vpns_deploy.data.loader import NO_AUGMENT, stream_batches

    seeds = (torch.randint(0, SEED_RANGE, (n,), generator=gen) if policy is not None
             else torch.full((n,), NO_AUGMENT))
    order = list(zip(perm.tolist(), seeds.tolist()))
    for x, y in stream_batches(data, [order[p] for p in mine], local, device, policy, workers):
        yield to_unit_float(x), y
