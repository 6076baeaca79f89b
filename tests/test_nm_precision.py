"""N:M masks, fp16/int8 deployment graphs, calibration feeding, and the TensorRT guard (CPU)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from calibration.calibrator import ImageCalibrationReader, calibration_images
from calibration.feeds import nhwc_uint8
from export.sparsity_check import has_nm, weight_patterns
from pipelines.cli import app
from vpns_deploy.masks import MaskSet, nm_select


def _groups_along_inputs(mask: torch.Tensor, m: int) -> torch.Tensor:
    x = mask.permute(0, 2, 3, 1) if mask.dim() == 4 else mask
    return x.reshape(-1, m).sum(1)


@settings(max_examples=40, deadline=None)
@given(nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8)]),
       out_ch=st.integers(1, 12), in_mult=st.integers(1, 6), k=st.sampled_from([1, 3]),
       lin_out=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_nm_masks_are_exactly_n_of_m_on_every_pruned_layer(nm, out_ch, in_mult, k, lin_out, seed):
    n, m = nm
    torch.manual_seed(seed)
    cin = in_mult * m
    net = nn.Sequential(nn.Conv2d(3, cin, 3), nn.Conv2d(cin, out_ch * m, k), nn.Flatten(), nn.LazyLinear(lin_out))
    net(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer's shape
    net[3] = nn.Linear(net[3].in_features, lin_out)
    masks = MaskSet.attach(net, pattern=(n, m))
    masks.init_scores_scaled()
    masks.update_from_scores()
    pruned = dict(masks.layers)
    assert set(pruned) == {"1", "3"} and [e.name for e in masks.exempt] == ["0"]  # the 3-channel stem stays dense
    for layer in pruned.values():
        assert torch.all(_groups_along_inputs(layer.mask, m) == n)
    assert masks.sparsity() < 1 - n / m  # the dense stem counts in the total
    # Learned scores change which weights survive, never the pattern.
    for layer in pruned.values():
        layer.scores.data.normal_()
    masks.update_from_scores()
    assert all(torch.all(_groups_along_inputs(layer.mask, m) == n) for layer in pruned.values())


def test_nm_select_keeps_the_largest_and_marks_grouped_convs_exempt():
    w = torch.tensor([[[[0.1]], [[-3.0]], [[0.2]], [[2.0]]]])  # (out 1, in 4, 1, 1)
    assert nm_select(w, 2, 4).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    net = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1))
    masks = MaskSet.attach(net, pattern=(2, 4))
    reasons = {e.name: e.reason for e in masks.exempt}
    assert reasons == {"0": "grouped/depthwise conv", "2": "6 input channels, not a multiple of 4"}
    assert [name for name, _ in masks.layers] == ["1"]


def test_has_nm_reads_the_input_axis():
    w = np.zeros((2, 8, 1, 1))
    w[:, [0, 1, 4, 6]] = 1.0
    assert has_nm(w, 2, 4, input_axis=1)
    w[0, 2] = 1.0
    assert not has_nm(w, 2, 4, input_axis=1)


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory, digits_model):
    """A real 2:4 VPNs run on digits, exported in fp32, fp16 and int8 with the prompt folded in: these tests
    check the prompt's place in the graphs, so they do not leave it to the run's validation decision (on
    136 digits one image flips it, and it flipped between two hosts' CPUs)."""
    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    out = tmp_path_factory.mktemp("runs") / "digits-2of4"
    cfg = CompressConfig(mode="2:4", epochs_mask=1, epochs_tune=1, batch_size=64)
    run_compress(digits_model, "digits_cnn", "digits", cfg, out, reporter=Reporter(quiet=True))
    run_export(out, with_prompt=True, reporter=Reporter(quiet=True), precisions=("fp32", "fp16", "int8"),
               calib_images=128)
    return out


def test_nm_pattern_survives_export_and_int8_quantisation(nm_run):
    manifest = json.loads((nm_run / "manifest.json").read_text())
    structure = manifest["metrics"]["structure"]
    assert structure["pattern"] == [2, 4]
    assert [e["name"] for e in structure["exempt"]] == ["features.0"]  # the 1-channel stem
    for name in ("model.onnx", "model.int8.onnx"):
        layers = weight_patterns(nm_run / name, 2, 4)
        assert len(layers) == 5  # 4 convs + classifier
        assert [w.nm for w in layers] == [False, True, True, True, True], name
    int8 = weight_patterns(nm_run / "model.int8.onnx", 2, 4)
    assert all(w.dtype == "int8" for w in int8)  # the check read the quantised weights themselves
    assert manifest["export"]["graphs"]["model.onnx"]["nm_pattern"]["int8"]["nm_layers"] == 4


def test_int8_graph_keeps_the_preprocessing_in_fp32_and_weights_symmetric(nm_run):
    """In whichever int8 format export measured faster here (export/int8_format.py): the folded prompt
    and normalisation stay fp32 and every weight zero point is 0 (N:M zeros stay zeros). Activations are
    uint8 asymmetric for ONNX Runtime; with --trt symmetric int8 (tests/test_int8_format.py)."""
    fmt = json.loads((nm_run / "manifest.json").read_text())["export"]["int8_format"]["format"]
    graph = onnx.load(str(nm_run / "model.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    first_q = ops.index("QuantizeLinear")
    assert {"Cast", "Transpose", "Add", "Clip"} <= set(ops[:first_q])  # prompt and normalisation unquantised
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    if fmt == "qdq":  # a weight: an int8 initializer dequantised in place
        zero_points = [n.input[2] for n in graph.node
                       if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(n.input) > 2]
    else:  # QLinearConv / QLinearMatMul / QGemm: input 5 is the weight's zero point
        zero_points = [n.input[5] for n in graph.node if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm")]
    assert len(zero_points) >= 4 and not any(inits[z].any() for z in zero_points)


def test_fp16_agrees_with_fp32_and_all_precisions_are_reported(nm_run):
    from pipelines.report_stage import run_report
    from vpns_deploy.progress import Reporter

    graphs = json.loads((nm_run / "manifest.json").read_text())["export"]["graphs"]
    assert graphs["model.onnx"]["precisions"]["fp16"]["vs_fp32"]["top1_agreement"] >= 0.995
    assert graphs["dense.onnx"]["precisions"]["fp16"]["vs_fp32"]["top1_agreement"] >= 0.995
    report = run_report(nm_run, reporter=Reporter(quiet=True), print_table=False, latency_budget=1.0)
    assert set(report["precision"]) == {"fp16", "int8"}
    for kinds in report["precision"].values():
        assert kinds["compressed"]["onnxruntime"] > 0.8 and kinds["dense"]["onnxruntime"] > 0.8
        assert set(kinds["compressed"]["latency_ms"]) == {"1", "64"}
    assert report["tensorrt"] == {"measured": False, "reason": "export ran without --trt",
                                  "ort_providers": report["tensorrt"]["ort_providers"]}
    md = (nm_run / "report.md").read_text()
    assert "top-1, ONNX Runtime int8" in md and "features.0 (1 input channels, not a multiple of 4)" in md


def test_calibration_batches_are_what_the_deployed_preprocessing_eats(nm_run, digits_splits):
    """The reader feeds the graph's raw input; the graph's own preprocessing of those batches equals
    the training-path preprocessing (prompt + normalisation) in PyTorch."""
    import onnxruntime as ort
    from onnx.utils import extract_model

    from pipelines.load_run import load_run
    from vpns_deploy.data.batches import to_unit_float

    images = calibration_images(digits_splits.train, 100, 7)
    reader = ImageCalibrationReader(images, batch_size=32)
    batches = list(iter(reader.get_next, None))
    assert [len(b["images"]) for b in batches] == [32, 32, 32, 4]
    assert np.array_equal(np.concatenate([b["images"] for b in batches]), nhwc_uint8(images))
    reader.rewind()
    assert np.array_equal(reader.get_next()["images"], batches[0]["images"])

    fp32 = nm_run / "model.onnx"
    graph = onnx.load(str(fp32)).graph
    net_input = next(n for n in graph.node if n.op_type == "Conv").input[0]
    pre = nm_run.parent / "preprocessing.onnx"
    extract_model(str(fp32), str(pre), ["images"], [net_input])
    session = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batches[0]["images"]})[0]
    model = load_run(nm_run).prompted(True)
    x = to_unit_float(torch.from_numpy(batches[0]["images"]).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = model.normalize(model.prompt(x)).numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_trt_without_gpu_says_what_is_missing_and_writes_the_onnx(nm_run):
    result = CliRunner().invoke(app, ["export", str(nm_run), "--trt"])
    assert result.exit_code == 0, result.output
    assert "TensorRT engine not built: no CUDA GPU" in result.stderr + result.stdout
    assert (nm_run / "model.onnx").is_file()
    result = CliRunner().invoke(app, ["export", str(nm_run), "--require-trt"])
    assert result.exit_code == 2 and "error: TensorRT engine not built" in result.stderr


def test_ort_reports_the_providers_a_session_really_uses(nm_run):
    from export.tensorrt_engine import ort_gpu_providers

    providers = ort_gpu_providers(nm_run / "model.onnx")
    if not torch.cuda.is_available():
        assert providers == ["CPUExecutionProvider"]  # even though get_available_providers() lists CUDA
    assert providers[-1] == "CPUExecutionProvider"


def test_int8_loses_at_most_one_point_on_pretrained_resnet20(tmp_path, resnet20_path, cifar_splits):
    from calibration.accuracy import ort_top1
    from calibration.session import cpu_session
    from export.deploy_graph import DeployGraph
    from export.onnx_export import export_onnx
    from export.precision import to_fp16, to_int8
    from vpns_deploy.models import load_model

    loaded = load_model(resnet20_path, "cifar_resnet20", 10)
    fp32 = tmp_path / "r20.onnx"
    export_onnx(DeployGraph(loaded.net, loaded.inputs, None), torch.from_numpy(nhwc_uint8(cifar_splits.test, 0, 2)), fp32)
    to_int8(fp32, tmp_path / "r20.int8.onnx", ImageCalibrationReader(calibration_images(cifar_splits.train, 512, 7)))
    to_fp16(fp32, tmp_path / "r20.fp16.onnx")
    test = cifar_splits.test.subset(2000, 7)
    top = {p: ort_top1(cpu_session(tmp_path / f"r20{p}.onnx"), test) for p in ("", ".int8", ".fp16")}
    assert top[""] - top[".int8"] <= 0.01, top
    assert abs(top[""] - top[".fp16"]) <= 0.005, top
