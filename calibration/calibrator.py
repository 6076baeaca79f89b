"""INT8 calibration data: raw uint8 NHWC batches, the deployed graph's own input.

The calibrator feeds the whole deployment graph, so the activation ranges it records are those of
the graph's own preprocessing (cast, prompt, clip, normalise) on real images: no second,
hand-written preprocessing path that could drift from the one that ships.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from calibration.feeds import nhwc_uint8
from vpns_deploy.config import DEFAULT_CALIB_IMAGES  # noqa: F401 - re-exported for export/
from vpns_deploy.data.dataset import AnySet, ImageSet

CALIB_BATCH = 64


def calibration_images(train: AnySet, n: int, seed: int) -> ImageSet:
    """n class-balanced training images (never test images: the test split measures the result), in
    memory as the network sees them un-augmented (a streamed split decodes just these n)."""
    chosen = train.subset(min(n, len(train)), seed)
    return chosen.head(len(chosen))


class ImageCalibrationReader(CalibrationDataReader):
    """ONNX Runtime's calibration interface over an ImageSet, in fixed order, batch by batch."""

    def __init__(self, images: ImageSet, input_name: str = "images", batch_size: int = CALIB_BATCH) -> None:
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield {self.input_name: nhwc_uint8(self.images, start, start + self.batch_size)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self.batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None
