"""CUDA paths: run where a GPU is visible, skipped with the reason elsewhere."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from vpns_deploy.device import resolve_device


@pytest.mark.gpu
def test_auto_device_picks_cuda():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.gpu
def test_compress_trains_on_cuda_and_exports(tmp_path, digits_model):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
                                      "--epochs-mask", "1", "--epochs-tune", "1", "--batch-size", "64",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda")
    assert abs(manifest["metrics"]["sparsity"] - 0.9) < 1e-4
    assert CliRunner().invoke(app, ["export", str(out)]).exit_code == 0


def _require_tensorrt():
    from export.tensorrt_engine import probe

    available = probe()
    if not available.usable:
        pytest.skip(f"TensorRT engines cannot be built here: {available.reason}")
    return available


@pytest.mark.gpu
def test_tensorrt_engine_builds_uses_sparse_kernels_and_matches_ort_fp16(tmp_path, resnet20_path, cifar_tar):
    """2:4 ResNet-20: fp16 engine with SPARSE_WEIGHTS, sparse tactics chosen, top-1 within 0.5 point of ORT fp16."""
    _require_tensorrt()
    out = tmp_path / "r20-2of4"
    runner = CliRunner()
    result = runner.invoke(app, ["compress", str(resnet20_path), "--arch", "cifar_resnet20", "--data", f"tar:{cifar_tar}",
                                 "--mode", "2:4", "--epochs-mask", "1", "--epochs-tune", "1", "--train-subset", "2000",
                                 "--test-subset", "2000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(out), "--precision", "fp16,int8", "--require-trt"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    engines = manifest["export"]["tensorrt"]["engines"]
    assert set(engines) == {"fp32", "fp16", "int8"}
    assert all(e["sparse_weights_flag"] for e in engines.values())
    assert engines["fp16"]["sparse_layers"] or engines["int8"]["sparse_layers"], "no layer got a sparse kernel"
    assert (out / "trt_timing.cache").stat().st_size > 0
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    trt_fp16 = report["tensorrt"]["engines"]["fp16"]["top1"]
    ort_fp16 = report["precision"]["fp16"]["compressed"]["onnxruntime"]
    assert abs(trt_fp16 - ort_fp16) <= 0.005
    lat = report["tensorrt"]["engines"]["fp16"]["latency_ms"]["64"]  # CUDA events, after warm-up
    assert lat["runs"] >= 100 and 0 < lat["median_ms"] <= lat["p90_ms"]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [["--mode", "channel", "--sparsity", "0.5"], ["--mode", "2:4"]], ids=["channel", "2of4"])
def test_structured_modes_train_on_cuda_under_amp_and_export(tmp_path, digits_model, mode):
    """Channel mode (torch-pruning on the CPU copy, masks back on the GPU) and N:M, on CUDA under AMP."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", *mode,
                                      "--epochs-mask", "1", "--epochs-tune", "1", "--batch-size", "64",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda") and manifest["precision"]["amp"] in ("bf16", "fp16")
    assert CliRunner().invoke(app, ["export", str(out)]).exit_code == 0
