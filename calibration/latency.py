"""Latency of a session: warm-up, then median and p90 over repeated timed runs."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from calibration.session import run

MIN_RUNS = 20
LATENCY_BATCHES = (1, 64)  # what every report and benchmark times: one image, and a serving batch


@dataclass(frozen=True)
class Latency:
    batch: int
    runs: int
    warmup: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch

    def to_dict(self) -> dict:
        return asdict(self) | {"per_image_ms": self.per_image_ms}


def measure_latency(session: ort.InferenceSession, batch: np.ndarray, runs: int = 30, warmup: int = 5) -> Latency:
    runs = max(runs, MIN_RUNS)
    for _ in range(warmup):
        run(session, batch)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(session, batch)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    return Latency(int(batch.shape[0]), runs, warmup, float(np.median(t)), float(np.percentile(t, 90)),
                   float(t.mean()), float(t.min()))


def tile_batch(images: np.ndarray, n: int) -> np.ndarray:
    """n images (the sample repeated as needed), contiguous: a timing input of any batch size."""
    reps = -(-n // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:n])


def latency_by_batch(session: ort.InferenceSession, sample: np.ndarray, runs: int = 30,
                     batches: tuple[int, ...] = LATENCY_BATCHES) -> dict[str, dict]:
    """Latency at each batch size, keyed by the batch as a string (the JSON layout reports use)."""
    return {str(b): measure_latency(session, tile_batch(sample, b), runs=runs).to_dict() for b in batches}
