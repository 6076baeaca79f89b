"""FP16 and INT8 deployment graphs derived from the verified fp32 ONNX, precision explicit in the graph.

TensorRT 10.1 deprecated and TensorRT 11 removed the FP16/INT8 builder flags and implicit INT8
calibration: a strongly typed network takes its precision from the ONNX itself. So:
  fp16  every float tensor and initialiser cast to float16 (ONNX Runtime's converter); the uint8
        input and the float32 logits stay as they are, so callers do not change.
  int8  static Q/DQ quantisation by ONNX Runtime's quantiser, scales calibrated by running the whole
        graph (its own preprocessing included) on raw uint8 training images. Symmetric int8 for
        activations and weights, per output channel for weights: what TensorRT requires; the same
        graph runs on the ONNX Runtime CPU. Only Conv, Gemm and MatMul are quantised: the folded
        preprocessing (prompt add, clip, normalise) stays fp32, so the prompt is not rounded away.
Zero weights quantise to exactly zero (symmetric, zero point 0), so an N:M pattern survives.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from calibration.calibrator import ImageCalibrationReader
from vpns_deploy.atomic import atomic_write

PRECISIONS = ("fp32", "fp16", "int8")
QUANTISED_OPS = ["Conv", "Gemm", "MatMul"]


def precision_path(fp32_path: Path, precision: str) -> Path:
    """model.onnx -> model.fp16.onnx / model.int8.onnx (fp32 keeps its name)."""
    return fp32_path if precision == "fp32" else fp32_path.with_suffix(f".{precision}.onnx")


def to_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.checker.check_model(model)
    atomic_write(dst, lambda tmp: onnx.save(model, tmp))


def to_int8(src: Path, dst: Path, reader: ImageCalibrationReader) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime's quantisation guide asks.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)

        def write(path: str) -> None:
            quantize_static(
                str(prepared), path, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTISED_OPS,
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
            onnx.checker.check_model(path)

        atomic_write(dst, write)
