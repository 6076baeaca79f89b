"""One interface over every runtime the tool measures: raw uint8 NHWC batches in, logits out.

PyTorch, ONNX Runtime and TensorRT (export/tensorrt_engine.EngineRunner) are all fed what the
deployed graph eats, so top-1 (here), parity (parity.py) and latency (latency.py) are each one loop
over this interface, not one loop per runtime.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch

from calibration.feeds import nhwc_batches
from vpns_deploy.data.batches import to_unit_float
from vpns_deploy.data.dataset import AnySet
from vpns_deploy.prompts import PromptedNet


class Runtime:
    """A model ready to run. Subclasses give `infer`; `timer` is wall-clock unless the runtime has a
    better clock (TensorRT: CUDA events)."""

    name = "runtime"
    warmup = 5  # untimed calls before timing (allocations, first-run graph work)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def timer(self, batch: np.ndarray) -> Callable[[], float]:
        """A function that runs `batch` once and returns the milliseconds that call took."""
        def once() -> float:
            t0 = time.perf_counter()
            self.infer(batch)
            return (time.perf_counter() - t0) * 1e3

        return once


class OrtRuntime(Runtime):
    def __init__(self, session: ort.InferenceSession, name: str = "onnxruntime") -> None:
        self.session, self.name = session, name
        (self.input_name,) = [i.name for i in session.get_inputs()]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class FedRuntime(Runtime):
    """Another runtime fed `feed(batch)` instead of the batch (e.g. test images framed for a graph
    with a resize in front, export/resize_front.frame)."""

    def __init__(self, inner: Runtime, feed: Callable[[np.ndarray], np.ndarray]) -> None:
        self.inner, self.feed, self.name = inner, feed, inner.name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.infer(self.feed(batch))


class TorchRuntime(Runtime):
    """A PromptedNet fed like the graph: uint8 NHWC -> [0, 1] NCHW (the same first step as the
    deployed preprocessing); `prompted` chooses whether the prompt is applied.

    On a CUDA device `compiled` runs it through torch.compile, and `timer` times with CUDA events
    on the GPU's own clock, the batch uploaded once beforehand: a timed call is the network's GPU
    work, without the host copies that `infer` adds (a GPU row of a report, also without TensorRT)."""

    def __init__(self, model: PromptedNet, device: torch.device, prompted: bool, name: str = "pytorch",
                 compiled: bool = False) -> None:
        self.model, self.device, self.prompted, self.name = model.to(device).eval(), device, prompted, name
        self.forward = torch.compile(self.model) if compiled else self.model

    def _logits(self, nhwc: torch.Tensor) -> torch.Tensor:
        return self.forward(to_unit_float(nhwc.permute(0, 3, 1, 2)), prompted=self.prompted)

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._logits(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def timer(self, batch: np.ndarray) -> Callable[[], float]:
        if self.device.type != "cuda":
            return super().timer(batch)
        x = torch.from_numpy(batch).to(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        @torch.no_grad()
        def once() -> float:
            start.record()
            self._logits(x)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        once()  # torch.compile compiles for this batch size here, outside any latency budget
        return once


def top1(runtime: Runtime, data: AnySet, batch_size: int = 256) -> float:
    """Fraction of `data` whose largest logit is its label (the one top-1 loop for every runtime)."""
    correct = n = 0
    for batch, labels in nhwc_batches(data, batch_size):
        correct += int((runtime.infer(batch).argmax(1) == labels).sum())
        n += len(labels)
    return correct / max(n, 1)


def paired_logits(a: Runtime, b: Runtime, data: AnySet, batch_size: int = 64):
    """(a's logits, b's logits) batch by batch on the same images: what parity compares."""
    for batch, _ in nhwc_batches(data, batch_size):
        yield a.infer(batch), b.infer(batch)
