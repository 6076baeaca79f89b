"""The target runtime a latency budget is measured on, and the probe that times compacted networks
against the dense one there (vpns_deploy/latency_budget.py searches; this module measures).

One code path for every target: each candidate is exported to ONNX as it will ship, fp32, uint8
NHWC images in with the cast, layout change and normalisation inside (export/deploy_graph.py, which
`report` times too: that fixed cost is 2 % of a compacted EfficientNet-Lite0 at batch 1 but 13 % at
batch 64, so a network-only search overstated what ships at larger batches), and opened as a
calibration.Runtime, ONNX Runtime on the CPU or a CUDA GPU, or a TensorRT engine built from the same
file; dense and candidate are timed interleaved (calibration/latency.py) at the target batch.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calibration.latency import measure_interleaved, speedup
from calibration.latency_cache import LatencyCache, digest
from calibration.runtime import OrtRuntime, Runtime
from calibration.session import cpu_session, cpu_threads
from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from vpns_deploy.config import CompressConfig
from vpns_deploy.errors import UserError
from vpns_deploy.latency_budget import Measured
from vpns_deploy.models.registry import InputSpec


def open_target(runtime: str, onnx_path: Path, batch: int, workdir: Path) -> Runtime:
    """`onnx_path` ready to run on `runtime` (config.TARGET_RUNTIMES); one error line when it cannot be here."""
    if runtime == "ort-cpu":
        return OrtRuntime(cpu_session(onnx_path), "onnxruntime-cpu")
    if runtime == "ort-cuda":
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if "CUDAExecutionProvider" not in session.get_providers():
            raise UserError("--target-runtime ort-cuda: ONNX Runtime cannot run on a CUDA GPU here (it needs "
                            "onnxruntime-gpu and a GPU with its CUDA libraries)",
                            "measure where the model will run, or pass --target-runtime ort-cpu")
        return OrtRuntime(session, "onnxruntime-cuda")
    from export.tensorrt_engine import EngineRunner, build_engine, probe

    found = probe()
    if not found.usable:
        raise UserError(f"--target-runtime tensorrt: TensorRT is not usable here ({found.reason})",
                        "measure on the machine that has TensorRT, or pass --target-runtime ort-cpu/ort-cuda")
    engine = workdir / (onnx_path.stem + ".engine")
    build_engine(onnx_path, engine, workdir / "timing.cache", sparse=False, max_batch=batch, opt_batch=batch)
    return EngineRunner(engine)


def structure_digest(net: nn.Module) -> str:
    """The dense network's layers and tensor shapes (not its values): what its latency depends on."""
    layout = [[n, list(t.shape)] for n, t in net.state_dict().items()]
    layout += [[n, type(m).__name__] for n, m in net.named_modules()]
    return digest(layout)


class NetworkProbe:
    """latency_budget.SpeedupProbe on one target runtime and batch; use as a context manager.

    Graphs are the deployed form (DeployGraph: uint8 NHWC in, preprocessing inside) of the dense network
    and of each candidate, without the label map (it costs the same in both) and without the prompt: the
    search precedes training, and whether the prompt ships is decided after it. The end-of-run check times
    what the prompt costs the chosen network (`prompt_cost`), since only the compressed graph carries it
    (a 4x-compacted EfficientNet-Lite0 at 128 px, batch 1: 0.44 ms with it, 0.41 ms without)."""

    def __init__(self, dense: nn.Module, inputs: InputSpec, image_shape: tuple[int, ...], runtime: str, batch: int,
                 budget_s: float = CompressConfig.target_probe_seconds, cache_root: Path | None = None) -> None:
        from calibration.cpu import measuring_machine

        self.runtime, self.batch, self.budget_s, self.inputs = runtime, batch, budget_s, inputs
        self._tmp = tempfile.TemporaryDirectory(prefix="vpns-probe-")
        self.workdir = Path(self._tmp.name)
        c, h, w = image_shape
        # batch 2: a batch-1 example pins the exported batch dimension
        self.example = torch.zeros(2, h, w, c, dtype=torch.uint8)
        self.input = np.random.default_rng(0).integers(0, 256, (batch, h, w, c), dtype=np.uint8)
        self.dense = self._open(self.deployed(dense), "dense")
        threads = cpu_threads() if runtime == "ort-cpu" else None
        self.key = {"machine": measuring_machine(), "runtime": runtime, "threads": threads,
                    "input": list(image_shape), "batch": batch, "precision": "fp32", "graph": "deployed",
                    "network": structure_digest(dense)}
        self.cache = LatencyCache(self.key, cache_root)
        self._dense_before = self.cache.dense_ms()  # read before this search adds its own points

    def deployed(self, net: nn.Module, prompt: nn.Module | None = None) -> nn.Module:
        return DeployGraph(net, self.inputs, prompt)

    def _open(self, graph: nn.Module, name: str) -> Runtime:
        """`graph` exported to ONNX in the work folder as NAME.onnx and opened on the target runtime."""
        path = self.workdir / f"{name}.onnx"
        export_onnx(graph, self.example, path)
        return open_target(self.runtime, path, self.batch, self.workdir)

    def __enter__(self) -> NetworkProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def describe(self) -> dict:
        return {"runtime": self.runtime, "batch": self.batch, "precision": "fp32",
                "graph": "deployed (uint8 NHWC in, preprocessing inside; no prompt or label map)",
                "budget_s_per_graph": self.budget_s, "cache": str(self.cache.path),
                "machine": self.key["machine"]["cpu"], "threads": self.key["threads"]}

    def forget(self, widths: list[tuple[int, ...]]) -> None:
        self.cache.forget(widths)

    def dense_ms_before(self) -> float | None:
        return self._dense_before

    def measure(self, widths: tuple[int, ...], build: Callable[[], nn.Module], fresh: bool = False) -> Measured:
        hit = None if fresh else self.cache.get(widths)
        if hit is not None:
            return Measured(hit["speedup"], tuple(hit["ci95"]), hit["dense_ms"], hit["ms"], cached=True)
        candidate = self._open(self.deployed(build()), "candidate")
        timed = measure_interleaved({"dense": self.dense, "candidate": candidate},
                                    {"dense": self.input, "candidate": self.input}, self.budget_s)
        s = speedup(timed["dense"], timed["candidate"])
        m = Measured(s.speedup, s.ci95, timed["dense"].median_ms, timed["candidate"].median_ms, cached=False)
        self.cache.put(widths, {"speedup": m.speedup, "ci95": list(m.ci95), "dense_ms": m.dense_ms, "ms": m.ms,
                                "runs": timed["candidate"].runs})
        return m

    def prompt_cost(self, build: Callable[[], nn.Module], prompt: nn.Module) -> tuple[float, tuple[float, float]]:
        """The candidate's latency with `prompt` folded in over without it, both graphs timed interleaved
        (> 1: the prompt slows it), with the 95 % interval; never cached. The ratio of two graphs in one
        measurement moves less between measurements than either's speedup over the dense graph."""
        net = build()
        graphs = {name: self._open(self.deployed(net, folded), name)
                  for name, folded in (("plain", None), ("prompted", prompt))}
        timed = measure_interleaved(graphs, {name: self.input for name in graphs}, self.budget_s)
        s = speedup(timed["prompted"], timed["plain"])  # prompted ms / plain ms
        return s.speedup, s.ci95
