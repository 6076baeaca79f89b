"""Top-1 of an exported graph in ONNX Runtime, fed raw uint8 images."""
from __future__ import annotations

import onnxruntime as ort

from calibration.feeds import nhwc_batches
from calibration.session import run
from vpns_deploy.data.dataset import ImageSet


def ort_top1(session: ort.InferenceSession, data: ImageSet, batch_size: int = 256) -> float:
    correct = 0
    for batch, labels in nhwc_batches(data, batch_size):
        correct += int((run(session, batch).argmax(1) == labels).sum())
    return correct / max(1, len(data))
