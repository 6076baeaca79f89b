"""--graph-resize: the Resize + centre crop folded in front of the graph, against torchvision's
evaluation transform (pixels) and the PyTorch reference pipeline (logits), on images of other sizes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torchvision.transforms import v2

from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from export.resize_front import MIN_OPSET, caller_contract, frame, prepend_resize, reference_resize
from vpns_deploy.models.registry import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt

SIZES = [(50, 70), (300, 200), (37, 37), (33, 47)]  # smaller and larger than the input, both aspects


def _photos(h: int, w: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Smooth uint8 images (low-resolution noise upsampled and blurred), closer to photos than noise is."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 256, (n, 3, max(2, h // 6), max(2, w // 6)), dtype=np.uint8))
    return v2.functional.gaussian_blur(v2.functional.resize(small, [h, w], antialias=True), [5, 5], [1.0, 1.0])


def _session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _front_only(size: int, crop_pct: float, interpolation: str) -> ort.InferenceSession:
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "front",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.UINT8, ["batch", size, size, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MIN_OPSET)])
    model.ir_version = 10
    return _session(prepend_resize(model, size, crop_pct, interpolation))


@pytest.mark.parametrize("size,crop_pct,interpolation", [(32, 1.0, "bilinear"), (64, 0.875, "bilinear"),
                                                         (48, 0.9, "bicubic"), (40, 1.15, "bicubic")])
def test_front_matches_torchvision_resize_and_centre_crop(size, crop_pct, interpolation):
    """Same output sizes and crop offsets as torchvision (exact); pixel values within rounding:
    measured mean |diff| <= 0.25 grey levels and <= 2 % of pixels off by more than one level."""
    session = _front_only(size, crop_pct, interpolation)
    for h, w in SIZES:
        images = _photos(h, w)
        got = session.run(None, {"images": np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())})[0]
        want = reference_resize(images, size, crop_pct, interpolation).permute(0, 2, 3, 1).numpy()
        assert got.shape == want.shape == (4, size, size, 3)
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        assert diff.mean() < 0.35, (h, w, diff.mean())
        assert (diff > 1).mean() < 0.03, (h, w, (diff > 1).mean())


def test_front_is_exact_when_the_image_already_has_the_input_size():
    session = _front_only(32, 1.0, "bilinear")
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    nhwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(session.run(None, {"images": nhwc})[0], nhwc)


@pytest.mark.parametrize("size,crop_pct,interpolation", [(32, 1.0, "bilinear"), (96, 0.875, "bicubic"),
                                                         (17, 0.6, "nearest"), (40, 1.15, "bilinear")])
def test_framed_images_pass_the_front_unchanged(size, crop_pct, interpolation):
    """What the strict parity check of a --graph-resize file relies on: evaluation-sized images, framed,
    come out of the front bit for bit as `seen` (the resize is the identity at its own size: exact in ORT)."""
    session = _front_only(size, crop_pct, interpolation)
    images = reference_resize(_photos(70, 90, n=3), size, crop_pct, interpolation)  # evaluation-sized
    nhwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
    framed, seen = frame(nhwc, size, crop_pct)
    assert framed.shape[1:3] == (round(size / crop_pct),) * 2 and seen.shape == nhwc.shape
    assert np.array_equal(session.run(None, {"images": framed})[0], seen)
    assert (seen is nhwc) == (crop_pct <= 1)
    if crop_pct < 1:  # unframed, the front resizes and crops them a second time: a different image
        assert not np.array_equal(session.run(None, {"images": nhwc})[0], nhwc)


def test_deployed_graph_with_resize_matches_the_pytorch_pipeline_on_other_sizes(tmp_path):
    """ORT on raw images of four other sizes vs torchvision resize + crop -> prompt -> normalise ->
    network -> label map in PyTorch: same top-1, logits within the resize's rounding."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6)).eval()
    size, crop_pct = 16, 0.875
    inputs = InputSpec(3, IMAGENET_MEAN, IMAGENET_STD, size=size, crop_pct=crop_pct)
    prompt = VisualPrompt(PromptSpec("pad", 3, (size, size), 2)).eval()
    with torch.no_grad():
        prompt.delta.normal_(0, 0.2)
    label_map = torch.tensor([5, 0, 3])
    path = tmp_path / "model.onnx"
    info = export_onnx(DeployGraph(net, inputs, prompt, label_map), torch.zeros(2, size, size, 3, dtype=torch.uint8),
                       path, edit=lambda m: prepend_resize(m, size, crop_pct, "bilinear"))
    assert info.input_shape == ["batch", "height", "width", 3] and info.output_shape == ["batch", 3]
    assert info.ops["Resize"] == 1 and info.ops["Gather"] == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = PromptedNet(net, inputs, prompt, label_map).eval()
    for h, w in SIZES:
        images = _photos(h, w, n=8, seed=h)
        got = session.run(None, {"images": np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())})[0]
        with torch.no_grad():
            want = reference(reference_resize(images, size, crop_pct, "bilinear").float() / 255).numpy()
        assert (got.argmax(1) == want.argmax(1)).all(), (h, w)
        assert np.abs(got - want).max() < 0.05, (h, w, np.abs(got - want).max())  # measured <= 0.012


def test_caller_contract_states_what_to_feed():
    fixed = caller_contract(224, 3, 0.875, "bicubic", graph_resize=False)
    assert fixed["dtype"] == "uint8" and fixed["layout"] == "NHWC" and fixed["shape"] == ["batch", 224, 224, 3]
    assert fixed["channel_order"] == "RGB" and "0..255" in fixed["value_range"] and "256" in fixed["resize"]
    dynamic = caller_contract(224, 3, 0.875, "bicubic", graph_resize=True)
    assert dynamic["shape"] == ["batch", "height", "width", 3] and dynamic["resize"].startswith("in the graph")


def test_export_graph_resize_on_a_real_run(tmp_path, digits_run):
    """export --graph-resize on a real (digits) run: the manifest says what to feed, the resize parity
    is measured on test images of another size, and the graph runs on any H x W."""
    from pipelines.export_stage import run_export
    from vpns_deploy.progress import Reporter

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    export = run_export(run, reporter=Reporter(quiet=True), graph_resize=True)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["export"]["graph_resize"] is True
    assert manifest["export"]["caller_must_feed"]["shape"] == ["batch", "height", "width", 1]
    graph = export["graphs"]["model.onnx"]
    assert graph["parity"]["passed"]  # at the input size the front is exact, so the strict check holds
    r = graph["resize_parity"]
    assert r["images"] > 0 and (r["height"], r["width"]) != (8, 8)
    assert r["top1_agreement"] >= 0.9 and r["pixels_mean_diff"] < 0.5
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(2, 8, 8, 1), (3, 20, 13, 1)]:
        assert session.run(None, {"images": np.zeros(shape, np.uint8)})[0].shape == (shape[0], 10)


@pytest.mark.shared
def test_export_graph_resize_on_an_imagenet_efficientnet_run(tmp_path, lite0_run):
    """EfficientNet-Lite0 at 96 px evaluates through resize 110 + centre crop 96 (crop_pct 0.875): the
    strict parity check of the file with the front passes (framed test images), and the resize parity
    on test images of another size is within the resize's rounding."""
    from pipelines.export_stage import run_export
    from vpns_deploy.progress import Reporter

    run = tmp_path / "run"
    shutil.copytree(lite0_run, run)
    export = run_export(run, reporter=Reporter(quiet=True), graph_resize=True)
    assert "110" in export["caller_must_feed"]["resize"]  # round(96 / 0.875)
    for name in ("model.onnx", "dense.onnx"):
        graph = export["graphs"][name]
        assert graph["parity"]["passed"] and graph["parity"]["top1_agreement"] == 1.0, graph["parity"]
        r = graph["resize_parity"]
        assert r["pixels_off_by_more_than_1"] < 0.02 and r["max_abs_diff"] < 2.0, r  # measured 0.0 and 0.82
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((1, 75, 130, 3), np.uint8)})[0].shape == (1, 4)
