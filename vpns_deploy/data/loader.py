"""Streaming: decode (and augment) images in torch DataLoader workers, in an order and with random
draws fixed by the caller's generator alone, so a run is the same with 0, 1 or 8 workers and
resumes exactly. A file that fails to decode in a worker comes back as a one-line error naming it."""
from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from vpns_deploy.data.dataset import AugmentPolicy, StreamSet
from vpns_deploy.data.geometry import sample_augment
from vpns_deploy.errors import UserError

NO_AUGMENT = -1  # the seed that means "un-augmented view"
PREFETCH_BATCHES = 2  # per worker (DataLoader's own default)


def default_workers() -> int:
    """Decoding workers: one core is left to the training loop; none where there is a single core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 0 if cores <= 1 else min(8, cores - 1)


def _private_generator() -> torch.Generator:
    """The DataLoader draws its workers' base seed from this, not from the global RNG: streaming then
    leaves the global RNG (prompt placement, dropout) exactly where an in-memory run leaves it. Our
    augmentation never uses worker seeds (each image carries its own)."""
    return torch.Generator().manual_seed(0)


def decode_view(data: StreamSet, i: int, policy: AugmentPolicy | None = None, seed: int = NO_AUGMENT) -> torch.Tensor:
    """Image i of a streamed set as the network sees it (augmented when a policy and seed are given)."""
    stored = data.geometry.store(data.source.read(i, data.geometry.channels))
    if data.geometry.size is None and data.native_hw is not None and tuple(stored.shape[-2:]) != data.native_hw:
        raise UserError(
            f"{data.source.name(i)} is {stored.shape[-2]}x{stored.shape[-1]} px but the other images are "
            f"{data.native_hw[0]}x{data.native_hw[1]}",
            "pass --input-size N to resize every image to N x N",
        )
    if policy is not None and seed != NO_AUGMENT:
        return sample_augment(stored, policy, seed)
    return data.geometry.view(stored)


class _Views(Dataset):
    """Map-style dataset over (index, seed) pairs; errors travel back as text, never as a traceback."""

    def __init__(self, data: StreamSet, policy: AugmentPolicy | None) -> None:
        self.data, self.policy = data, policy

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]):
        i, seed = item
        try:
            return decode_view(self.data, i, self.policy, seed), int(self.data.labels[i]), None
        except UserError as exc:
            return None, int(self.data.labels[i]), str(exc)
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the file
            return None, int(self.data.labels[i]), (f"cannot decode image {self.data.source.name(i)} "
                                                    f"({exc.__class__.__name__}: {exc}); remove or replace that file")


def _collate(items):
    errors = [e for _, _, e in items if e is not None]
    if errors:
        return None, None, errors[0]
    return torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items], dtype=torch.int64), None


def stream_batches(
    data: StreamSet, order: list[tuple[int, int]], batch_size: int, device: torch.device,
    policy: AugmentPolicy | None = None, workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches (on `device`) of the (index, seed) pairs in `order`, decoded by worker processes."""
    workers = data.workers if workers is None else workers
    cuda = device.type == "cuda"
    loader = DataLoader(
        _Views(data, policy), batch_size=batch_size, sampler=order, num_workers=workers,
        collate_fn=_collate, pin_memory=cuda, prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        generator=_private_generator(),
    )
    it = iter(loader)
    try:
        for x, y, error in it:
            if error is not None:
                raise UserError(error)
            yield x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class _Stored(Dataset):
    """Decoded images at their stored size (the in-memory cache is filled through this, in parallel)."""

    def __init__(self, source, geometry, native_hw: tuple[int, int] | None) -> None:
        self.source, self.geometry, self.native_hw = source, geometry, native_hw

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            img = self.geometry.store(self.source.read(i, self.geometry.channels))
            if self.geometry.size is None and self.native_hw is not None and tuple(img.shape[-2:]) != self.native_hw:
                raise UserError(
                    f"{self.source.name(i)} is {img.shape[-2]}x{img.shape[-1]} px but the other images are "
                    f"{self.native_hw[0]}x{self.native_hw[1]}",
                    "pass --input-size N to resize every image to N x N")
            return img, 0, None
        except UserError as exc:
            return None, 0, str(exc)
        except Exception as exc:  # noqa: BLE001
            return None, 0, (f"cannot decode image {self.source.name(i)} ({exc.__class__.__name__}: {exc}); "
                             "remove or replace that file")


DECODE_BATCH = 256


def decode_stored(source, geometry, workers: int, native_hw: tuple[int, int] | None) -> torch.Tensor:
    """Every image of `source` decoded to its stored form, as one uint8 N x C x H x W tensor."""
    loader = DataLoader(_Stored(source, geometry, native_hw), batch_size=DECODE_BATCH, num_workers=workers,
                        collate_fn=_collate, prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
                        generator=_private_generator())
    out: torch.Tensor | None = None
    start = 0
    for x, _, error in loader:
        if error is not None:
            raise UserError(error)
        if out is None:  # filled in place: peak memory is the set once, not twice
            out = torch.empty((len(source), *x.shape[1:]), dtype=torch.uint8)
        out[start : start + len(x)] = x
        start += len(x)
    assert out is not None, "decode_stored on an empty source"
    return out
