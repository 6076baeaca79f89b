"""ONNX Runtime sessions, and which providers a session really runs on."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

CPU = "CPUExecutionProvider"


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def optimization_level(path: Path) -> "ort.GraphOptimizationLevel":
    """ORT_ENABLE_ALL, except EXTENDED for graphs holding float16 weights: onnxruntime-gpu 1.31.1
    crashes the process (SIGSEGV) creating an ENABLE_ALL CPU session for an fp16 ViT, and loads it at
    EXTENDED (measured); ALL's extra CPU layout rewrites are for float32 convolutions anyway."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if fp16 else ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def cpu_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with graph optimisations (optimization_level) and a fixed thread count (for stable timings)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = optimization_level(path)
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])


def run(session: ort.InferenceSession, batch) -> "np.ndarray":  # noqa: F821
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: batch})[0]
