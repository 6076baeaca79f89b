"""ONNX Runtime sessions, and which providers a session really runs on."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

CPU = "CPUExecutionProvider"


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with all graph optimisations and a fixed thread count (for stable timings)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])


def run(session: ort.InferenceSession, batch) -> "np.ndarray":  # noqa: F821
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: batch})[0]
