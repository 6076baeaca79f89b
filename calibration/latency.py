"""Latency of a session: warm-up, then median and p90 over repeated timed runs."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from calibration.session import run

MIN_RUNS = 20


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
