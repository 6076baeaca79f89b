"""FP16 and INT8 deployment graphs derived from the verified fp32 ONNX, precision explicit in the graph.

TensorRT 10.1 deprecated and TensorRT 11 removed the FP16/INT8 builder flags and implicit INT8
calibration: a strongly typed network takes its precision from the ONNX itself. So:
  fp16  every float tensor and initialiser cast to float16 (ONNX Runtime's converter); the uint8
        input and the float32 logits stay as they are, so callers do not change.
  int8  static quantisation by ONNX Runtime's quantiser, scales calibrated by running the whole
        graph (its own preprocessing included) on raw uint8 training images. Q/DQ: symmetric int8 for
        activations and weights, per output channel for weights: what TensorRT requires. QOperator
        (uint8 activations): where ONNX Runtime's CPU runs it faster, measured (int8_format.py).
        Only Conv, Gemm and MatMul are quantised: the folded preprocessing (prompt add, clip,
        normalise) stays fp32, so the prompt is not rounded away.
Zero weights quantise to exactly zero (symmetric weights, zero point 0), so an N:M pattern survives.
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


INT8_FORMATS = ("qdq", "qoperator")  # ONNX Runtime's two int8 graph formats (int8_format.py picks one)


def to_int8(src: Path, dst: Path, reader: ImageCalibrationReader, int8_format: str = "qdq",
            per_channel: bool = True) -> None:
    """`int8_format` qdq: QuantizeLinear/DequantizeLinear around float ops, int8 activations (what TensorRT
    reads; ONNX Runtime fuses it into integer kernels). qoperator: fused integer ops (QLinearConv,
    QLinearMatMul) with uint8 activations (asymmetric), the QOperator form ONNX Runtime recommends on
    x86-64: it warns that int8 activations in QOperator form run badly there. Weights are symmetric int8
    either way, so zero weights stay exactly zero. `per_channel` False: one scale per weight tensor
    (TensorRT and the accuracy checks expect per channel; for measurement)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qdq = int8_format == "qdq"
    quant_format = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    activations = QuantType.QInt8 if qdq else QuantType.QUInt8

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime's quantisation guide asks.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)

        def write(path: str) -> None:
            quantize_static(
                str(prepared), path, reader, quant_format=quant_format, op_types_to_quantize=QUANTISED_OPS,
                per_channel=per_channel, activation_type=activations, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": qdq, "WeightSymmetric": True},
            )
            onnx.checker.check_model(path)

        atomic_write(dst, write)
