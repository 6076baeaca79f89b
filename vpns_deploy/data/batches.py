"""Batch iteration over in-memory uint8 sets, with augmentation done in torch on the batch's device."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from vpns_deploy.data.dataset import AugmentPolicy, ImageSet


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float [0,1]: the first step of the deployed preprocessing too."""
    return images.float().div_(255.0)


def augment(x: torch.Tensor, policy: AugmentPolicy, gen: torch.Generator) -> torch.Tensor:
    """Random crop from a zero-padded copy plus optional horizontal flip, per sample."""
    n, _, h, w = x.shape
    p = policy.crop_pad
    if p > 0:
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # n x h x 1
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # n x 1 x w
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()
    if policy.hflip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def train_batches(
    data: ImageSet,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    policy: AugmentPolicy | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of float [0,1] batches; augmented when a policy is given."""
    perm = torch.randperm(len(data), generator=gen)
    for start in range(0, len(data), batch_size):
        idx = perm[start : start + batch_size]
        x = to_unit_float(data.images[idx].to(device, non_blocking=True))
        if policy is not None:
            x = augment(x, policy, gen)
        yield x, data.labels[idx].to(device, non_blocking=True)


def eval_batches(
    data: ImageSet, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data), batch_size):
        x = to_unit_float(data.images[start : start + batch_size].to(device))
        yield x, data.labels[start : start + batch_size].to(device)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
