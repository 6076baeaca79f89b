"""torch -> ONNX with a dynamic batch, checked with onnx's checker and strict shape inference."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import torch
from torch import nn

from vpns_deploy.atomic import atomic_write
from vpns_deploy.errors import UserError

# onnxruntime-gpu 1.31 refuses IR versions above 13 (shared/docs/TOOLCHAIN.md).
MAX_IR_VERSION = 10
MAX_BATCH = 4096
PROTOBUF_LIMIT = 2**31  # one ONNX file (a protobuf message) holds at most 2 GiB, weights included


@dataclass(frozen=True)
class GraphInfo:
    path: Path
    opset: int
    ir_version: int
    input_name: str
    input_type: str
    input_shape: list[str | int]
    output_shape: list[str | int]
    ops: dict[str, int]
    num_initializers: int


def _shape(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_graph(path: Path) -> GraphInfo:
    """Structural checks that need no runtime: checker, strict shape inference, one dynamic batch dim."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    (inp,), (out,) = inferred.graph.input, inferred.graph.output
    ops: dict[str, int] = {}
    for node in inferred.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    info = GraphInfo(
        path=Path(path),
        opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        ir_version=model.ir_version,
        input_name=inp.name,
        input_type=onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type),
        input_shape=_shape(inp),
        output_shape=_shape(out),
        ops=ops,
        num_initializers=len(model.graph.initializer),
    )
    if not isinstance(info.input_shape[0], str) or not isinstance(info.output_shape[0], str):
        raise RuntimeError(f"{path}: batch dimension is not dynamic ({info.input_shape} -> {info.output_shape})")
    return info


def _quiet():
    """The dynamo exporter logs progress and warnings meant for its developers; keep the CLI clean."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, level)
    return stack


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str = "images",
                output_name: str = "logits", verify: Callable[[Path], None] | None = None,
                edit: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None) -> GraphInfo:
    """Export module(example) with a dynamic batch to path, atomically.

    The file is renamed into place only after the graph checks and `verify` (e.g. an ONNX Runtime
    parity check) have passed on the temporary file, so a failed export never replaces a good one.
    `edit` rewrites the exported graph before those checks.
    """
    module = module.eval().cpu()
    weight_bytes = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    if weight_bytes >= PROTOBUF_LIMIT:
        raise UserError(f"{Path(path).name}: {weight_bytes / 2**30:.2f} GiB of weights do not fit one ONNX file "
                        "(protobuf's 2 GiB limit)", "compress it further (e.g. --mode channel) or export a smaller model")
    checked: list[GraphInfo] = []

    def write(tmp: str) -> None:
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(
                    module, (example.cpu(),), tmp,
                    input_names=[input_name], output_names=[output_name],
                    dynamo=True, external_data=False, verbose=False,
                    dynamic_shapes={_arg_name(module): {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
                )
        except Exception as exc:  # exporter errors are long; keep the first line
            raise UserError(f"ONNX export failed: {str(exc).strip().splitlines()[0][:200]}",
                            "report this model's architecture as an issue") from None
        model = onnx.load(tmp)
        if edit is not None:  # e.g. export/resize_front.py's Resize in front of the input
            model = edit(model)
        if model.ir_version > MAX_IR_VERSION or edit is not None:
            model.ir_version = min(model.ir_version, MAX_IR_VERSION)
            onnx.save(model, tmp)
        checked.append(check_graph(Path(tmp)))
        if verify is not None:
            verify(Path(tmp))

    atomic_write(Path(path), write)
    return replace(checked[0], path=Path(path))


def _arg_name(module: nn.Module) -> str:
    import inspect

    return next(iter(inspect.signature(module.forward).parameters))
