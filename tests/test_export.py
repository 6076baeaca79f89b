"""Export: the deployed graph starts with the preprocessing, holds the prompt as a constant, and
ONNX Runtime reproduces PyTorch on real images."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from calibration.feeds import nhwc_uint8
from calibration.parity import check_parity
from calibration.session import cpu_session
from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from pipelines.load_run import load_run
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt


def test_graph_begins_with_preprocessing_and_folds_the_prompt(digits_run):
    model = onnx.load(str(digits_run / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops[:6] == ["Cast", "Transpose", "Add", "Clip", "Mul", "Add"]
    inp = model.graph.input[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [8, 8, 1]
    # The prompt add's constant equals the run's learned prompt (g(P) * M).
    add = next(n for n in model.graph.node if n.op_type == "Add")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    const = next(inits[name] for name in add.input if name in inits)
    run = load_run(digits_run)
    assert np.allclose(const.squeeze(0), 255 * run.prompt.additive().detach().numpy(), atol=1e-4)
    assert np.abs(const).sum() > 0


def test_manifest_records_parity_and_artifact_hashes(digits_run):
    manifest = json.loads((digits_run / "manifest.json").read_text())
    parity = manifest["export"]["graphs"]["model.onnx"]["parity"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 1.0
    for name in ("model.pt", "dense.pt", "masks.pt", "prompt.pt", "model.onnx", "dense.onnx"):
        assert len(manifest["artifacts"][name]["sha256"]) == 64


def test_every_exported_graph_carries_its_classes_and_contract(digits_run, tmp_path):
    """model.onnx shipped without manifest.json still names its outputs: metadata_props in every graph
    and precision (fp16/int8 derived from the stamped fp32), with the manifest's sha256 of the final file."""
    import shutil

    from export.onnx_metadata import read_metadata
    from pipelines.export_stage import run_export
    from vpns_deploy import __version__
    from vpns_deploy.data.cache import sha256_file
    from vpns_deploy.progress import Reporter

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    run_export(run, reporter=Reporter(quiet=True), precisions=("fp32", "fp16", "int8"), calib_images=64)
    manifest = json.loads((run / "manifest.json").read_text())
    for stem, graph in (("model", "compressed"), ("dense", "dense reference")):
        for name in (f"{stem}.onnx", f"{stem}.fp16.onnx", f"{stem}.int8.onnx"):
            meta = read_metadata(run / name)
            assert meta["classes"] == manifest["data"]["classes"] == [str(i) for i in range(10)], name
            assert meta["input_contract"] == manifest["export"]["caller_must_feed"], name
            assert meta["input_contract"]["dtype"] == "uint8" and meta["input_contract"]["layout"] == "NHWC"
            assert (meta["arch"], meta["graph"], meta["producer"]) == ("digits_cnn", graph, f"vpns-deploy {__version__}")
            assert manifest["artifacts"][name]["sha256"] == sha256_file(run / name), name


def test_metadata_names_classes_only_where_the_outputs_are_theirs():
    from onnx import TensorProto, helper

    from export.onnx_metadata import graph_metadata, stamp

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"other": "kept", "classes": "[\"stale\"]"})
    props = graph_metadata(["a", "b", "c"], {"dtype": "uint8"}, "resnet20", "dense reference")
    keys = {p.key: p.value for p in stamp(model, props).metadata_props}
    assert "classes" not in keys and keys["other"] == "kept" and keys["arch"] == "resnet20"
    props = graph_metadata(list("abcde"), {"dtype": "uint8"}, None, "compressed")
    keys = {p.key: p.value for p in stamp(model, props).metadata_props}
    assert json.loads(keys["classes"]) == list("abcde") and keys["arch"] == ""


def test_dense_graph_has_no_prompt(digits_run):
    ops = [n.op_type for n in onnx.load(str(digits_run / "dense.onnx")).graph.node]
    assert ops[:4] == ["Cast", "Transpose", "Mul", "Add"] and "Clip" not in ops


def test_session_takes_any_batch_of_uint8_and_rejects_float(digits_run, digits_splits):
    session = cpu_session(digits_run / "model.onnx")
    for n in (1, 3, 64):
        out = session.run(None, {"images": nhwc_uint8(digits_splits.test, 0, n)})[0]
        assert out.shape == (n, 10)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        session.run(None, {"images": nhwc_uint8(digits_splits.test, 0, 2).astype(np.float32)})


def test_tampered_artifact_is_detected(digits_run, tmp_path):
    import shutil

    from vpns_deploy.errors import UserError

    copy = tmp_path / "run"
    shutil.copytree(digits_run, copy)
    with open(copy / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_run(copy)


def test_expand_prompt_exports_with_a_pad_node(tmp_path, digits_splits):
    from vpns_deploy.models.digits_cnn import DigitsCNN
    from vpns_deploy.models.registry import get_arch

    torch.manual_seed(0)
    net = DigitsCNN().eval()
    prompt = VisualPrompt(PromptSpec("expand", 1, (8, 8), 2))
    prompt.delta.data.normal_()
    inputs = get_arch("digits_cnn").inputs
    path = tmp_path / "expand.onnx"
    example = torch.from_numpy(nhwc_uint8(digits_splits.test, 0, 2))
    export_onnx(DeployGraph(net, inputs, prompt), example, path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Pad" in ops[:6]
    parity = check_parity(path, PromptedNet(net, inputs, prompt), digits_splits.test, prompted=True)
    assert parity.passed and parity.top1_agreement == 1.0
