"""Which weights of an ONNX graph carry an N:M pattern: read from the file that ships.

Conv weights are (out, in, kh, kw) and Gemm/MatMul weights (out, in) or (in, out); the pattern runs
along input channels (what sparse tensor cores read). In a Q/DQ graph the weight is the int8
initialiser feeding a DequantizeLinear, in a QOperator graph the int8 weight input of QLinearConv /
QLinearMatMul / QGemm, so the check sees the quantised values themselves.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class WeightPattern:
    node: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    nm: bool  # every group of M along input channels has at most N non-zeros
    zero_fraction: float


def _producer_weight(graph: onnx.GraphProto, name: str, inits: dict) -> tuple[str, np.ndarray] | None:
    if name in inits:
        return name, numpy_helper.to_array(inits[name])
    for node in graph.node:  # int8 weight -> DequantizeLinear -> Conv
        if node.op_type == "DequantizeLinear" and name in node.output and node.input[0] in inits:
            return node.input[0], numpy_helper.to_array(inits[node.input[0]])
    return None


# op -> the input that holds its weight: float/Q-DQ graphs, and QOperator graphs' fused integer ops
WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1, "QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}


def has_nm(weight: np.ndarray, n: int, m: int, input_axis: int = 1) -> bool:
    w = np.moveaxis(weight, input_axis, -1)
    if w.shape[-1] % m:
        return False
    groups = (w.reshape(-1, m) != 0).sum(1)
    return bool((groups <= n).all())


def weight_patterns(path: Path, n: int, m: int) -> list[WeightPattern]:
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    out = []
    for node in graph.node:
        at = WEIGHT_INPUT.get(node.op_type)
        if at is None or len(node.input) <= at:
            continue
        found = _producer_weight(graph, node.input[at], inits)
        if found is None:
            continue
        _, w = found
        if node.op_type in ("Conv", "QLinearConv"):
            axis = 1
        elif node.op_type in ("Gemm", "QGemm"):
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0
        else:
            axis = 0  # MatMul: (in, out)
        if w.ndim < 2:
            continue
        out.append(WeightPattern(node.name, node.op_type, tuple(w.shape), str(w.dtype),
                                 has_nm(w, n, m, axis), float((w == 0).mean())))
    return out
