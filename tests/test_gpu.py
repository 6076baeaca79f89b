"""CUDA paths: run where a GPU is visible, skipped with the reason elsewhere."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vpns_deploy.cli import app
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
