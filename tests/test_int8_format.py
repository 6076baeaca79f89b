"""int8 ships in the format ONNX Runtime runs faster on this CPU (QDQ or QOperator), measured, with
the reason recorded; the accuracy checks stay (real export, real ORT sessions, real timing)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest

from calibration.calibrator import calibration_images
from calibration.feeds import nhwc_uint8
from export.int8_format import choose_int8_format
from pipelines.export_stage import run_export
from pipelines.load_run import load_run
from pipelines.report_render import cpu_text
from vpns_deploy.progress import Reporter


def _format_of(path: Path) -> str:
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("QLinearConv" in ops) != ("DequantizeLinear" in ops and "Conv" in ops), ops
    return "qoperator" if "QLinearConv" in ops else "qdq"


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, digits_run) -> Path:
    run = Path(shutil.copytree(digits_run, tmp_path_factory.mktemp("int8") / "run"))
    run_export(run, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=128)
    return run


def test_export_measures_both_formats_and_ships_the_faster_by_its_rule(int8_run):
    export = json.loads((int8_run / "manifest.json").read_text())["export"]
    choice = export["int8_format"]
    assert set(choice["measured"]) == {"qdq", "qoperator"}
    for fmt in ("qdq", "qoperator"):
        for batch in ("1", "64"):
            lat = choice["measured"][fmt][batch]
            assert lat["runs"] >= 3 and lat["ci95_ms"][0] <= lat["median_ms"] <= lat["ci95_ms"][1]
    gain = choice["speedup"]["64"]
    assert choice["format"] == ("qoperator" if gain["ci95"][0] > 1.0 else "qdq")  # the rule, as measured
    assert f"{gain['speedup']:.2f}x" in choice["reason"] and choice["cpu"]["instruction_sets"] is not None
    for graph in ("model.onnx", "dense.onnx"):  # both graphs in the chosen format, accuracy still checked
        int8 = export["graphs"][graph]["precisions"]["int8"]
        assert int8["format"] == choice["format"] == _format_of(int8_run / int8["file"])
        assert int8["vs_fp32"]["top1_agreement"] > 0.9


def test_report_states_the_shipped_format_and_why(int8_run):
    from pipelines.report_stage import run_report

    report = run_report(int8_run, reporter=Reporter(quiet=True), print_table=False, latency_budget=0.5)
    fmt = report["cpu"]["int8_format"]
    assert fmt["format"] in ("qdq", "qoperator") and fmt["reason"]
    assert f"int8 format shipped: {fmt['format']}" in cpu_text(report["cpu"])
    assert cpu_text(report["cpu"]) in (int8_run / "report.md").read_text()


def test_tensorrt_keeps_qdq_without_measuring(tmp_path, digits_run):
    loaded = load_run(digits_run)
    calib = calibration_images(loaded.train_split(), 64, 0)
    dst = tmp_path / "model.int8.onnx"
    choice = choose_int8_format(digits_run / "model.onnx", dst, calib, nhwc_uint8(loaded.test_split(), 0, 8),
                                tensorrt=True)
    assert choice.format == "qdq" and choice.measured == {} and "TensorRT" in choice.reason
    assert _format_of(dst) == "qdq"
    graph = onnx.load(str(dst)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [n.input[2] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and not any(inits[z].any() for z in zero_points)  # symmetric: what TensorRT requires
