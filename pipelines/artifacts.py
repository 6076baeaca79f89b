"""Every file name a run directory may hold, in one place (the run contract's vocabulary)."""
from __future__ import annotations

MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint.pt"  # only in the hidden .<run>.partial/ directory while compress runs

# compress
MODEL_PT, DENSE_PT, MASKS_PT, PROMPT_PT = "model.pt", "dense.pt", "masks.pt", "prompt.pt"
COMPRESS_OUTPUTS = (MODEL_PT, DENSE_PT, MASKS_PT)  # prompt.pt only when the method learns a prompt

# export (fp16/int8 siblings: export.precision.precision_path(MODEL_ONNX, precision))
MODEL_ONNX, DENSE_ONNX = "model.onnx", "dense.onnx"
TIMING_CACHE = "trt_timing.cache"  # TensorRT's, kept across exports

# report
REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"
PLOT_PNGS = ("training_curves.png", "layer_sparsity.png", "latency.png")
