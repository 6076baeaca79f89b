"""What the deployed graph eats: raw uint8 NHWC batches, exactly as a camera or decoder hands them over
(at the network's input size: a streamed set is decoded and centre-cropped like evaluation)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vpns_deploy.data.batches import uint8_batches
from vpns_deploy.data.dataset import AnySet


def _nhwc(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


def nhwc_uint8(data: AnySet, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Images start..stop as uint8 N x H x W x C (decoded here for a streamed set: keep the range small)."""
    return _nhwc(data.batch(start, stop))


def nhwc_batches(data: AnySet, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The whole set in order (decoded by workers when streamed), uint8 NHWC with labels."""
    for images, labels in uint8_batches(data, batch_size):
        yield _nhwc(images), labels.numpy()
