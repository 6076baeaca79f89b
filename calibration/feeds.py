"""What the deployed graph eats: raw uint8 NHWC batches, exactly as a camera or decoder hands them over."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vpns_deploy.data.dataset import ImageSet


def nhwc_uint8(data: ImageSet, start: int = 0, stop: int | None = None) -> np.ndarray:
    return np.ascontiguousarray(data.images[start:stop].permute(0, 2, 3, 1).numpy())


def nhwc_batches(data: ImageSet, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(data), batch_size):
        stop = start + batch_size
        yield nhwc_uint8(data, start, stop), data.labels[start:stop].numpy()
