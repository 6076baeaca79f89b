"""Run directories are all-or-nothing; report measures and writes what it claims."""
from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from pipelines.report_stage import run_report
from pipelines.run_create import staged_directory
from pipelines.run_dir import latest_run
from vpns_deploy.atomic import atomic_write_text
from pipelines.cli import app
from vpns_deploy.progress import Reporter

runner = CliRunner()


def test_failed_stage_leaves_no_directory(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_directory(final, overwrite=False) as tmp:
            (tmp / "half.pt").write_text("half")
            raise RuntimeError("boom")
    assert not final.exists() and os.listdir(tmp_path) == []


def test_failure_after_a_checkpoint_keeps_the_partial_run_for_resuming(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(final, overwrite=False) as tmp:
            (tmp / "checkpoint.pt").write_bytes(b"state")
            raise KeyboardInterrupt
    assert not final.exists() and os.listdir(tmp_path) == [".run.partial"]
    with staged_directory(final, overwrite=False) as tmp:
        (tmp / "model.pt").write_text("done")
    assert sorted(os.listdir(final)) == ["model.pt"]  # the checkpoint is dropped once complete


def test_overwrite_replaces_only_when_complete(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (final / "manifest.json").write_text('{"tool": "vpns-deploy"}')  # only a run may be replaced
    with pytest.raises(RuntimeError):
        with staged_directory(final, overwrite=True):
            raise RuntimeError("boom")
    assert (final / "old.txt").read_text() == "old"
    with staged_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["new.txt"] and os.listdir(tmp_path) == ["run"]


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "previous")
    from vpns_deploy.atomic import atomic_write

    def failing(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["a.json"]


def test_latest_run_ignores_partial_directories(tmp_path):
    for name in ("a", ".b.partial-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    assert latest_run(tmp_path).name == "a"


def test_report_measures_accuracy_sizes_and_latency(digits_run):
    report = run_report(digits_run, reporter=Reporter(quiet=True), latency_budget=1.0)
    saved = json.loads((digits_run / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    acc = report["accuracy"]
    assert acc["compressed"]["onnxruntime"] == pytest.approx(acc["compressed"]["pytorch"], abs=1 / 450)
    assert acc["dense"]["onnxruntime"] == pytest.approx(acc["dense"]["pytorch"], abs=1 / 450)
    # the prompt ships where compress's validation decision said so (tests/test_heads.py covers both ways)
    decision = json.loads((digits_run / "manifest.json").read_text())["metrics"]["prompt_decision"]
    assert report["ships_prompt"] == decision["fold"] and acc["compressed"]["pytorch_prompt"] is not None
    counts = report["counts"]
    assert counts["compressed"]["nonzero"] < 0.2 * counts["dense"]["nonzero"]
    for kind in ("dense", "compressed", "network_only"):
        for batch in ("1", "64"):
            lat = report["latency_ms"][kind][batch]
            assert lat["runs"] >= 20 and 0 < lat["median_ms"] <= lat["p90_ms"]
    assert report["files"]["model.onnx"]["gzip_bytes"] < report["files"]["dense.onnx"]["gzip_bytes"]
    md = (digits_run / "report.md").read_text()
    assert "| top-1, ONNX Runtime |" in md and "p90" in md


@pytest.mark.shared
def test_short_real_cifar_run_exports_with_parity(tmp_path, resnet20_path, cifar_tar):
    out = tmp_path / "r20"
    args = ["compress", str(resnet20_path), "--arch", "cifar_resnet20", "--data", f"tar:{cifar_tar}",
            "--sparsity", "0.9", "--train-subset", "300", "--test-subset", "300", "--epochs-mask", "1",
            "--epochs-tune", "1", "--batch-size", "64", "--lr-scores", "1e-3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert manifest["metrics"]["epochs"][0]["lr"]["0"] == pytest.approx(1e-3)  # --lr-scores reached the optimiser
    assert [e["stage"] for e in manifest["metrics"]["epochs"]] == ["mask", "tune"]
    assert manifest["data"]["train_images"] + manifest["data"]["val_images"] == 300  # validation carved from the 300
    assert manifest["data"]["val_images"] == 30 and manifest["model"]["sha256"].startswith("12fca82f")
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    graphs = manifest["export"]["graphs"]
    assert graphs["model.onnx"]["parity"]["passed"]
    assert graphs["model.onnx"]["prompt_folded"] == manifest["metrics"]["prompt_decision"]["fold"]
    assert graphs["model.onnx"]["input"]["shape"][1:] == [32, 32, 3]
