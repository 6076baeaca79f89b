"""Export never ships a lower-precision graph it cannot stand behind: a planted bad int8 graph (the real
quantiser's output with its weights scrambled) is judged on test images, retried with the fallback recipe,
then left out of the run with the reason in manifest.json and a warning in the report."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from rich.console import Console

import export.int8_format
import pipelines.export_stage
from calibration.parity import Agreement, paired_halfwidth
from export.precision import to_int8
from export.precision_gate import judge
from pipelines.export_stage import run_export
from vpns_deploy.errors import UserError
from vpns_deploy.progress import Reporter


def _scrambled_to_int8(*args, **kwargs) -> None:
    """The real quantiser, then every int8 weight tensor's output channels reversed: a broken graph
    that still loads and runs."""
    to_int8(*args, **kwargs)
    dst = Path(args[1])
    model = onnx.load(str(dst))
    for init in model.graph.initializer:
        w = onnx.numpy_helper.to_array(init)
        if w.dtype == np.int8 and w.ndim >= 2:
            init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(w[::-1]), init.name))
    onnx.save(model, str(dst))


@pytest.fixture()
def run_copy(tmp_path, digits_run) -> Path:
    return Path(shutil.copytree(digits_run, tmp_path / "run"))


def test_a_bad_int8_graph_is_retried_then_left_out_with_the_reason(run_copy, monkeypatch):
    run_export(run_copy, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=64)
    assert (run_copy / "model.int8.onnx").is_file()  # a good int8 export first: the gate passes it

    monkeypatch.setattr(pipelines.export_stage, "to_int8", _scrambled_to_int8)
    monkeypatch.setattr(export.int8_format, "to_int8", _scrambled_to_int8)
    out = io.StringIO()
    run_export(run_copy, reporter=Reporter(quiet=True, console=Console(file=out, width=400)),
               precisions=("fp32", "int8"), calib_images=64)
    lines = out.getvalue().splitlines()

    manifest = json.loads((run_copy / "manifest.json").read_text())
    record = manifest["export"]
    assert record["precisions"] == ["fp32"]
    assert "loses" in record["left_out"]["int8"] and "--max-precision-drop" in record["left_out"]["int8"]
    model_int8 = record["graphs"]["model.onnx"]["precisions"]["int8"]
    assert not model_int8["ships"]
    assert [a["recipe"] for a in model_int8["attempts"]] == ["none", "edges"]  # the fallback was tried
    assert all(not a["ships"] and a["vs_fp32"]["top1_drop_points"] > 1.0 for a in model_int8["attempts"])
    for name in ("model.int8.onnx", "dense.int8.onnx"):  # the earlier good files are gone with their records
        assert not (run_copy / name).exists() and name not in manifest["artifacts"]
    assert (run_copy / "model.onnx").is_file() and "model.onnx" in manifest["artifacts"]
    assert any(line.startswith("warning: int8 left out") for line in lines), lines


def test_the_report_warns_about_a_left_out_precision(run_copy, monkeypatch):
    from pipelines.compare import report_runs

    monkeypatch.setattr(pipelines.export_stage, "to_int8", _scrambled_to_int8)
    monkeypatch.setattr(export.int8_format, "to_int8", _scrambled_to_int8)
    run_export(run_copy, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=64)
    report_runs([run_copy], latency_budget=0.3, reporter=Reporter(quiet=True), print_table=False)
    report = json.loads((run_copy / "report.json").read_text())
    assert report["precision"] == {}  # nothing but fp32 is measured
    for page in ("report.md", "report.html"):
        assert "Warning: int8 is not shipped" in (run_copy / page).read_text().replace("**", "")


def test_judge_uses_the_tolerance_and_refuses_fp16_overflow():
    def agreement(ref: float, cand: float, agree: float = 0.95) -> Agreement:
        return Agreement(1000, 0.5, agree, agree, 0, ref, cand, 0.8)

    assert judge("int8", agreement(0.80, 0.795), 1.0).ships
    assert not judge("int8", agreement(0.80, 0.785), 1.0).ships
    assert judge("int8", agreement(0.80, 0.785), 2.0).ships
    assert judge("int8", agreement(0.80, 0.81), 0.0).ships  # a gain is no loss
    assert not judge("fp16", agreement(0.80, 0.80, agree=0.97), 1.0).ships  # overflow, whatever the top-1


def test_paired_halfwidth_counts_only_the_images_that_differ():
    same = np.array([True, False] * 500)
    assert paired_halfwidth(same, same) == 0.0
    flipped = same.copy()
    flipped[:100] = ~flipped[:100]  # 100 of 1,000 images change, 50 each way
    assert paired_halfwidth(same, flipped) == pytest.approx(100 * 1.96 * np.sqrt(0.1 / 1000), rel=1e-6)


def test_max_precision_drop_out_of_range_is_one_line(digits_run):
    with pytest.raises(UserError, match="--max-precision-drop must be between 0 and 100"):
        run_export(digits_run, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), max_drop=-1)


def test_the_dense_reference_is_judged_but_never_decides_what_ships(run_copy, monkeypatch):
    """A bad dense.int8.onnx (the reference the report compares with) is recorded as over the tolerance,
    kept, and leaves model.int8.onnx shipping."""
    def scramble_dense_only(*args, **kwargs) -> None:
        (_scrambled_to_int8 if Path(args[1]).name.startswith("dense") else to_int8)(*args, **kwargs)

    monkeypatch.setattr(pipelines.export_stage, "to_int8", scramble_dense_only)
    run_export(run_copy, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=64)
    record = json.loads((run_copy / "manifest.json").read_text())["export"]
    assert record["precisions"] == ["fp32", "int8"] and record["left_out"] == {}
    dense = record["graphs"]["dense.onnx"]["precisions"]["int8"]
    assert dense["file"] == "dense.int8.onnx" and not dense["within_tolerance"]
    assert len(dense["attempts"]) == 1  # the shipped graph's recipe, no fallback for a reference
    assert record["graphs"]["model.onnx"]["precisions"]["int8"]["within_tolerance"]
    assert (run_copy / "model.int8.onnx").is_file() and (run_copy / "dense.int8.onnx").is_file()
