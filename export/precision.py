"""FP16 and INT8 deployment graphs derived from the verified fp32 ONNX, precision explicit in the graph.

TensorRT 10.1 deprecated and TensorRT 11 removed the FP16/INT8 builder flags and implicit INT8
calibration: a strongly typed network takes its precision from the ONNX itself. So:
  fp16  every float tensor and initialiser cast to float16 (ONNX Runtime's converter); the uint8
        input and the float32 logits stay as they are, so callers do not change.
  int8  static quantisation by ONNX Runtime's quantiser, scales calibrated by running the whole
        graph (its own preprocessing included) on raw uint8 training images; weights symmetric int8
        per output channel. The recipe (INT8_RECIPE):
        - Conv, Gemm and MatMul are quantised, and so are the activations behind them (Relu, Clip:
          ReLU6). Quantising Clip/Relu lets the quantiser fold the activation into its producer's
          output range, as TF-Lite and TensorRT do. Without it a convolution's output is quantised
          over its pre-activation range (EfficientNet-Lite0: the stem's output spans about 30 units
          of which ReLU6 keeps 0..6, so a third of the int8 levels are left for what survives), and
          the error compounds layer by layer: top-1 agreement with fp32 46 % on a 30 %-accurate
          ImageNet->CIFAR map head, 88-90 % with the fold, the rest being ties among tiny margins.
        - The deployed graph's preprocessing (cast, prompt add, Clip(0, 255), normalise: every node
          the first convolution depends on) stays fp32, so the prompt is not rounded away.
        - Activations: uint8 asymmetric for ONNX Runtime (its recommended U8S8 on x86-64; they keep
          8 bits for ReLU6's 0..6 where symmetric int8 keeps 7), symmetric int8 for TensorRT, which
          reads only that. Q/DQ or QOperator form: int8_format.py measures which is faster.
        - `keep_float`: nodes left in float, the fallback export tries when the recipe loses more
          accuracy than its tolerance (precision_gate.py).
Zero weights quantise to exactly zero (symmetric weights, zero point 0), so an N:M pattern survives.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from calibration.calibrator import ImageCalibrationReader
from vpns_deploy.atomic import atomic_write

PRECISIONS = ("fp32", "fp16", "int8")
QUANTISED_OPS = ["Conv", "Gemm", "MatMul", "Clip", "Relu"]
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Names the int8 recipe in export's fingerprint: a graph quantised by another recipe is made again.
INT8_RECIPE = "fused-activations-1"


def precision_path(fp32_path: Path, precision: str) -> Path:
    """model.onnx -> model.fp16.onnx / model.int8.onnx (fp32 keeps its name)."""
    return fp32_path if precision == "fp32" else fp32_path.with_suffix(f".{precision}.onnx")


def to_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.checker.check_model(model)
    atomic_write(dst, lambda tmp: onnx.save(model, tmp))


INT8_FORMATS = ("qdq", "qoperator")  # ONNX Runtime's two int8 graph formats (int8_format.py picks one)


def preprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """Every node the first weighted layer's data input depends on: the deployed preprocessing."""
    producers = {out: node for node in model.graph.node for out in node.output}
    first = next((n for n in model.graph.node if n.op_type in WEIGHT_OPS), None)
    if first is None:
        return []
    seen: dict[str, onnx.NodeProto] = {}
    todo = [first.input[0]]
    while todo:
        node = producers.get(todo.pop())
        if node is not None and node.name not in seen:
            seen[node.name] = node
            todo.extend(node.input)
    return list(seen)


def edge_layers(model: onnx.ModelProto) -> list[str]:
    """The first and the last weighted layer (stem and classifier): the layers quantisation hurts most,
    kept in float by the fallback recipe."""
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS]
    return list(dict.fromkeys(weighted[:1] + weighted[-1:]))


def to_int8(src: Path, dst: Path, reader: ImageCalibrationReader, int8_format: str = "qdq",
            per_channel: bool = True, tensorrt: bool = False, keep_float: str = "none") -> None:
    """`int8_format` qdq: QuantizeLinear/DequantizeLinear around float ops (what TensorRT reads; ONNX
    Runtime fuses it into integer kernels). qoperator: fused integer ops (QLinearConv, QLinearMatMul), the
    form ONNX Runtime recommends on x86-64. `tensorrt`: symmetric int8 activations (Q/DQ only), else uint8
    asymmetric. `keep_float` "edges": the stem and the classifier stay float (the fallback recipe).
    `per_channel` False: one scale per weight tensor (for measurement)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if tensorrt and int8_format != "qdq":
        raise ValueError("TensorRT reads Q/DQ graphs only")
    quant_format = QuantFormat.QDQ if int8_format == "qdq" else QuantFormat.QOperator
    activations = QuantType.QInt8 if tensorrt else QuantType.QUInt8

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime's quantisation guide asks.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        excluded = preprocessing_nodes(model) + (edge_layers(model) if keep_float == "edges" else [])

        def write(path: str) -> None:
            quantize_static(
                str(prepared), path, reader, quant_format=quant_format, op_types_to_quantize=QUANTISED_OPS,
                nodes_to_exclude=excluded, per_channel=per_channel, activation_type=activations,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True},
            )
            onnx.checker.check_model(path)

        atomic_write(dst, write)
