"""--graph-resize: an ONNX Resize + centre crop in front of the deployed graph, so it takes any H x W.

The evaluation transform of the training pipeline is torchvision's: resize the shorter side to
round(size / crop_pct) (antialiased; the longer side to int(side * long / short)), centre-crop
size x size (offset round(margin / 2), half to even; a side shorter than `size`, crop_pct > 1, is
first zero-padded by floor/ceil halves), round to uint8. The graph computes the same sizes, pads and
offsets from the input's shape (Shape, integer Div, Max, Round), then Resize(axes=[1, 2], antialias=1)
-> Pad -> Slice -> Round -> Clip(0, 255) -> Cast(uint8), then the fixed-size graph unchanged.
ONNX Runtime's antialiased filter and torchvision's differ by rounding: tests/test_graph_resize.py
measures pixels and logits.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 18  # Resize's axes/antialias/keep_aspect_ratio_policy and CenterCropPad
# InputSpec.interpolation -> ONNX Resize mode (bicubic with PIL's and torchvision's a = -0.5)
MODES = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest"}


def resize_side(size: int, crop_pct: float) -> int:
    """The shorter side the evaluation transform resizes to before its centre crop: round(size /
    crop_pct), as the data pipeline's evaluation geometry (vpns_deploy/data/geometry.py) does."""
    return int(round(size / crop_pct))


def reference_resize(images: torch.Tensor, size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    """The PyTorch reference of the folded front: uint8 N x C x H x W -> torchvision Resize(shorter
    side, antialias) + CenterCrop(size), the evaluation transform of the training pipeline."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    side = resize_side(size, crop_pct)
    if min(images.shape[-2:]) != side:
        images = TF.resize(images, [side], interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.center_crop(images, [size, size])


def frame(images: np.ndarray, size: int, crop_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation-sized uint8 N x size x size x C images -> (what to feed a graph with the front, what its
    network then sees). The test images are already resized and cropped, so fed as they are the front
    would resize and crop them a second time (crop_pct < 1). Framed instead, the front's resize is the
    identity (the shorter side already has its target length: exact in ONNX Runtime for every mode,
    measured), so the strict parity check covers the whole file:
    - crop_pct <= 1: edge-padded to side x side; the front's centre crop returns the images unchanged;
    - crop_pct > 1: their centre side x side; the front zero-pads it back, so the network sees the
      images with everything outside that centre zeroed."""
    side = resize_side(size, crop_pct)
    if side < size:
        top = (size - side) // 2  # torchvision's CenterCrop pads the floor half before
        seen = np.zeros_like(images)
        seen[:, top:top + side, top:top + side] = images[:, top:top + side, top:top + side]
        return np.ascontiguousarray(images[:, top:top + side, top:top + side]), seen
    top = round((side - size) / 2)  # torchvision's centre-crop offset (half to even, as the front rounds)
    pad = (top, side - size - top)
    return np.pad(images, ((0, 0), pad, pad, (0, 0)), mode="edge"), images


def caller_contract(size: int, channels: int, crop_pct: float, interpolation: str, graph_resize: bool) -> dict:
    """What a caller must feed the graph, stated exactly (goes into the manifest)."""
    contract = {
        "dtype": "uint8", "layout": "NHWC", "channel_order": "RGB" if channels == 3 else f"{channels} channel(s)",
        "value_range": "0..255 raw pixels (no normalisation: the graph normalises)",
        "shape": ["batch", "height" if graph_resize else size, "width" if graph_resize else size, channels],
    }
    if graph_resize:
        contract["resize"] = (f"in the graph: shorter side to {resize_side(size, crop_pct)} "
                              f"({interpolation}, antialiased), centre crop {size}x{size}, rounded to uint8")
    else:
        contract["resize"] = (f"none in the graph: feed {size}x{size} images, resized as training evaluated them "
                              f"(shorter side to {resize_side(size, crop_pct)}, {interpolation} antialiased, "
                              f"centre crop {size})")
    return contract


def prepend_resize(model: onnx.ModelProto, size: int, crop_pct: float, interpolation: str) -> onnx.ModelProto:
    """Return model with a dynamic-H x W uint8 NHWC input resized and cropped to its fixed size x size input."""
    opset = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset.version < MIN_OPSET:
        raise ValueError(f"--graph-resize needs opset >= {MIN_OPSET}, the graph has {opset.version}")
    if interpolation not in MODES:
        raise ValueError(f"no ONNX Resize mode for interpolation {interpolation!r}")
    graph = model.graph
    old = graph.input[0]
    dims = old.type.tensor_type.shape.dim
    channels = dims[3].dim_value
    inner = f"{old.name}_resized"
    for node in graph.node:
        node.input[:] = [inner if name == old.name else name for name in node.input]
    side = resize_side(size, crop_pct)
    consts = {"rf_side": np.array(side, np.int64), "rf_size": np.array(size, np.int64),
              "rf_zero": np.array(0, np.int64), "rf_two_i": np.array(2, np.int64),
              "rf_two": np.array(2.0, np.float32), "rf_hw_start": np.array([1], np.int64),
              "rf_hw_end": np.array([3], np.int64), "rf_axes": np.array([1, 2], np.int64),
              "u8_min": np.array(0.0, np.float32), "u8_max": np.array(255.0, np.float32)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    mode = MODES[interpolation]
    resize_attrs: dict = {"axes": [1, 2], "mode": mode}
    if mode != "nearest":
        resize_attrs["antialias"] = 1
    if mode == "cubic":
        resize_attrs["cubic_coeff_a"] = -0.5
    n = helper.make_node
    front = [
        n("Cast", [old.name], ["rf_x"], to=TensorProto.FLOAT),
        # torchvision's Resize(side): shorter side -> side, longer -> int(side * long / short)
        n("Shape", ["rf_x"], ["rf_shape"]),
        n("Slice", ["rf_shape", "rf_hw_start", "rf_hw_end"], ["rf_hw"]),
        n("ReduceMin", ["rf_hw"], ["rf_short"], keepdims=1),
        n("Mul", ["rf_hw", "rf_side"], ["rf_hw_scaled"]),
        n("Div", ["rf_hw_scaled", "rf_short"], ["rf_new_hw"]),  # int64: floor division
        n("Resize", ["rf_x", "", "", "rf_new_hw"], ["rf_resized"], **resize_attrs),
        # torchvision's CenterCrop pads a side shorter than size with zeros: floor half before, the rest after
        n("Sub", ["rf_size", "rf_new_hw"], ["rf_short_by"]),
        n("Max", ["rf_short_by", "rf_zero"], ["rf_pad"]),
        n("Div", ["rf_pad", "rf_two_i"], ["rf_pad_lo"]),
        n("Sub", ["rf_pad", "rf_pad_lo"], ["rf_pad_hi"]),
        n("Concat", ["rf_pad_lo", "rf_pad_hi"], ["rf_pads"], axis=0),
        n("Pad", ["rf_resized", "rf_pads", "u8_min", "rf_axes"], ["rf_padded"]),
        n("Add", ["rf_new_hw", "rf_pad"], ["rf_padded_hw"]),
        # then crops at offset round((padded - size) / 2), half to even (ONNX Round does the same)
        n("Sub", ["rf_padded_hw", "rf_size"], ["rf_margin"]),
        n("Cast", ["rf_margin"], ["rf_margin_f"], to=TensorProto.FLOAT),
        n("Div", ["rf_margin_f", "rf_two"], ["rf_half"]),
        n("Round", ["rf_half"], ["rf_half_r"]),
        n("Cast", ["rf_half_r"], ["rf_start"], to=TensorProto.INT64),
        n("Add", ["rf_start", "rf_size"], ["rf_end"]),
        n("Slice", ["rf_padded", "rf_start", "rf_end", "rf_axes"], ["rf_crop"]),
        n("Round", ["rf_crop"], ["rf_round"]),
        n("Clip", ["rf_round", "u8_min", "u8_max"], ["rf_clip"]),
        n("Cast", ["rf_clip"], [inner], to=TensorProto.UINT8),
    ]
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    batch = dims[0].dim_param or "batch"
    new_input = helper.make_tensor_value_info(old.name, TensorProto.UINT8, [batch, "height", "width", channels])
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    return model
