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


def cpu_session(path: Path, threads: int | None = None, spinning: bool = False,
                profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session with graph optimisations (optimization_level), a fixed thread count (for stable
    timings) and its threads sleeping, not spinning, between calls.

    ORT's intra-op threads spin-wait after every call by default. calibration.latency times graphs
    interleaved, so each session's spinning threads took the cores from the next session's call:
    ResNet-56 (32 px, 2 cores) read 6.14 ms at batch 1 interleaved against 2.30 ms alone, and 113 vs
    73.5 ms at batch 64; with spinning off, 2.24 vs 2.29 ms and 75.4 vs 75.5 ms (measured 2026-12-03;
    git show 6e83c8b:docs/benchmarks.md). Alone, spinning off costs nothing measurable there. `spinning=True` (ORT's default)
    exists to measure exactly that difference (git show 60685c4:bench/probes/ort_spinning.py).
    `profile_prefix`: ORT's per-node profile written there (calibration/layer_profile.py)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = optimization_level(path)
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])


def run(session: ort.InferenceSession, batch) -> "np.ndarray":  # noqa: F821
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: batch})[0]
