"""TensorRT: the only module that touches it. Probe, build, inspect, time, and measure top-1.

Design for TensorRT 10.x and 11.x with one code path: the network is strongly typed (precision comes
from the ONNX: fp32, fp16 casts, or int8 Q/DQ), so no FP16/INT8 builder flags and no implicit
calibrator (deprecated in 10.1, removed in 11). STRONGLY_TYPED is set where the enum still has it
(it is the only mode in 11). SPARSE_WEIGHTS is set when the graph has N:M (2:4) weights.

TensorRT is an optional extra (`pip install '.[trt]'`). It is probed in a subprocess first: TensorRT
objects created on a machine without a GPU have crashed the interpreter, and a crash there must not
take the CLI down with it. Timing uses CUDA events through torch, which owns the device buffers.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from calibration.runtime import Runtime

PROBE = r"""
import json, sys
out = {"tensorrt": None, "builder": False}
try:
    import tensorrt as trt
    out["tensorrt"] = trt.__version__
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    out["builder"] = builder is not None
    out["fast_int8"] = bool(getattr(builder, "platform_has_fast_int8", False))
except Exception as e:  # noqa: BLE001 - report, never raise: this runs in a throwaway process
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class TrtAvailability:
    cuda: bool
    tensorrt: str | None
    builder: bool
    reason: str | None  # why an engine cannot be built here, None when it can

    @property
    def usable(self) -> bool:
        return self.reason is None


def probe(timeout: float = 120.0) -> TrtAvailability:
    """Can this machine build TensorRT engines? Asked of a child process, never of this one."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        cuda = False
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {
            "tensorrt": None, "builder": False, "error": f"probe exited with {done.returncode}"}
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        info = {"tensorrt": None, "builder": False, "error": str(e)}
    reasons = []
    if not cuda:
        reasons.append("no CUDA GPU (torch.cuda.is_available() is False)")
    if info.get("tensorrt") is None:
        reasons.append("TensorRT is not installed (pip install '.[trt]' with NVIDIA's index reachable)")
    elif not info.get("builder"):
        reasons.append(f"TensorRT {info['tensorrt']} cannot create a builder: {info.get('error', 'unknown')}")
    return TrtAvailability(cuda, info.get("tensorrt"), bool(info.get("builder")), "; ".join(reasons) or None)


@dataclass
class EngineInfo:
    path: str
    tensorrt: str
    sparse_weights_flag: bool
    layers: int
    sparse_layers: list[str] = field(default_factory=list)  # layers whose chosen tactic is a sparse kernel
    build_seconds: float = 0.0
    profile: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_engine(onnx_path: Path, engine_path: Path, timing_cache: Path, sparse: bool,
                 max_batch: int = 256, opt_batch: int = 64, workspace_gib: float = 2.0) -> EngineInfo:
    """Parse the ONNX into a strongly typed network and build a serialised engine (atomically)."""
    import time

    import tensorrt as trt

    from vpns_deploy.atomic import atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then names tactics
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    inp = network.get_input(0)
    _, h, w, c = inp.shape  # uint8 NHWC, dynamic batch
    profile = builder.create_optimization_profile()
    shapes = {"min": (1, h, w, c), "opt": (opt_batch, h, w, c), "max": (max_batch, h, w, c)}
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    seconds = time.perf_counter() - t0
    atomic_write_bytes(engine_path, bytes(plan))
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(plan))
    layers = inspect_layers(engine)
    return EngineInfo(str(engine_path), trt.__version__, sparse, len(layers), sparse_layer_names(layers), seconds,
                      {k: list(v) for k, v in shapes.items()})


def inspect_layers(engine) -> list[dict]:
    import tensorrt as trt

    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    return [layer if isinstance(layer, dict) else {"Name": layer} for layer in info.get("Layers", [])]


def sparse_layer_names(layers: list[dict]) -> list[str]:
    """Layers whose chosen tactic is a sparse kernel (NVIDIA names those tactics '..._sparse_...')."""
    return [str(layer.get("Name")) for layer in layers if "sparse" in str(layer.get("TacticName", "")).lower()]


class EngineRunner(Runtime):
    """One execution context; device buffers held by torch, so CUDA events time it. A calibration
    Runtime: top-1 and latency come from the same loops as ONNX Runtime's and PyTorch's."""

    name = "tensorrt"
    warmup = 20  # GPU clocks ramp up over the first calls

    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.stream = torch.cuda.Stream()

    def _bind(self, batch: "np.ndarray"):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        self.context.set_input_shape(self.input, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        return x, y

    def infer(self, batch: "np.ndarray") -> "np.ndarray":
        x, y = self._bind(batch)
        with self.torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return y.cpu().numpy()

    run = infer

    def timer(self, batch: "np.ndarray"):
        """One enqueue timed by CUDA events (the buffers are bound once, outside the timed calls)."""
        torch = self.torch
        buffers = self._bind(batch)

        def once() -> float:
            _ = buffers  # the bound buffers must outlive the timed calls
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.stream):
                start.record(self.stream)
                self.context.execute_async_v3(self.stream.cuda_stream)
                end.record(self.stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        return once


def ort_gpu_providers(onnx_path: Path) -> list[str]:
    """The providers an ORT session over this graph really runs on (not get_available_providers())."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)  # a missing CUDA/TensorRT library is an answer here, not an error
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        # ORT prints its provider fallback with print(); keep that out of the user's terminal.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=wanted)
    except Exception:  # noqa: BLE001 - a provider library that fails to load means "not usable"
        return ["CPUExecutionProvider"]
    return session.get_providers()
