"""Top-1 of an exported graph in ONNX Runtime, fed raw uint8 images (runtime.top1 over an ORT session)."""
from __future__ import annotations

import onnxruntime as ort

from calibration.runtime import OrtRuntime, top1
from vpns_deploy.data.dataset import AnySet


def ort_top1(session: ort.InferenceSession, data: AnySet, batch_size: int = 256) -> float:
    return top1(OrtRuntime(session), data, batch_size)
