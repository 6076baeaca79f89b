"""Bad input: one line naming the problem and the fix, non-zero exit, no traceback, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipelines.cli import app
from vpns_deploy.models.digits_cnn import DigitsCNN

runner = CliRunner()


def _fails_cleanly(args: list[str], out: Path, needle: str) -> str:
    result = runner.invoke(app, [*args, "--out", str(out)] if args[0] == "compress" else args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and needle in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]
    return err


def test_missing_model_file(tmp_path):
    _fails_cleanly(["compress", str(tmp_path / "nope.pt"), "--arch", "digits_cnn", "--data", "digits"],
                   tmp_path / "run", "model file not found")


def test_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_text("this is not a checkpoint\n")
    _fails_cleanly(["compress", str(bad), "--arch", "digits_cnn", "--data", "digits"], tmp_path / "run",
                   "is not a PyTorch checkpoint")


def test_wrong_arch_for_the_weights(tmp_path, digits_model):
    err = _fails_cleanly(["compress", str(digits_model), "--arch", "cifar_resnet20", "--data", "digits"],
                         tmp_path / "run", "")
    assert "do not fit --arch cifar_resnet20" in err or "channel" in err


def test_wrong_arch_state_dict_mismatch(tmp_path, resnet20_path, cifar_tar):
    _fails_cleanly(["compress", str(resnet20_path), "--arch", "cifar_resnet56", "--data", f"tar:{cifar_tar}"],
                   tmp_path / "run", "do not fit --arch cifar_resnet56")


def test_unknown_arch(tmp_path, digits_model):
    _fails_cleanly(["compress", str(digits_model), "--arch", "resnet9000", "--data", "digits"],
                   tmp_path / "run", "unknown architecture")


@pytest.mark.parametrize("sparsity", ["0", "1", "1.5", "-0.1"])
def test_sparsity_outside_open_interval(tmp_path, digits_model, sparsity):
    _fails_cleanly(["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
                    "--sparsity", sparsity], tmp_path / "run", "sparsity must lie strictly between 0 and 1")


def test_unknown_data_spec(tmp_path, digits_model):
    _fails_cleanly(["compress", str(digits_model), "--arch", "digits_cnn", "--data", "mnist:/x"],
                   tmp_path / "run", "unknown data spec")


def test_missing_data_path(tmp_path, digits_model):
    _fails_cleanly(["compress", str(digits_model), "--arch", "digits_cnn", "--data", f"imagefolder:{tmp_path}/no"],
                   tmp_path / "run", "data not found")


def test_empty_data_folder(tmp_path, digits_model):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "test" / "a").mkdir(parents=True)
    _fails_cleanly(["compress", str(digits_model), "--arch", "digits_cnn", "--data",
                    f"imagefolder:{tmp_path / 'data'}"], tmp_path / "run", "no images found")


def test_class_count_mismatch(tmp_path, image_folder):
    data = image_folder(tmp_path / "data", ("a", "b", "c"))
    model = tmp_path / "cifar.pt"
    from vpns_deploy.models.cifar_resnet import CifarResNet

    torch.save(CifarResNet(20, 10).state_dict(), model)
    _fails_cleanly(["compress", str(model), "--arch", "cifar_resnet20", "--data", f"imagefolder:{data}"],
                   tmp_path / "run", "class-count mismatch")


def test_pickled_module_needs_trust(tmp_path):
    model = tmp_path / "full.pt"
    torch.save(DigitsCNN(), model)
    _fails_cleanly(["compress", str(model), "--data", "digits"], tmp_path / "run", "--trust-pickle")


def test_pickled_module_with_trust_runs_and_exports(tmp_path):
    model = tmp_path / "full.pt"
    torch.manual_seed(0)
    torch.save(DigitsCNN(), model)
    out = tmp_path / "run"
    # --arch gives the pickled module's input normalisation (it must fit it); without it (or --mean/--std)
    # the module would be refused, never fed ImageNet statistics by assumption
    result = runner.invoke(app, ["compress", str(model), "--data", "digits", "--arch", "digits_cnn", "--trust-pickle",
                                 "--epochs-mask", "1",
                                 "--epochs-tune", "0", "--test-subset", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(out), "--trust-pickle"])  # the run holds the pickled module
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file()


def test_existing_run_directory_is_not_overwritten(tmp_path, digits_model):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_export_of_a_directory_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run directory" in result.stderr


def test_console_script_reports_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("vpns-deploy")
    proc = subprocess.run([str(exe), "compress", str(tmp_path / "x.pt"), "--arch", "digits_cnn", "--data", "digits"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model file not found") and "Traceback" not in proc.stderr
    help_text = subprocess.run([str(exe), "compress", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "deviations from the reference" in help_text and "docs/OPTIONS.md" in help_text and "--sparsity" in help_text


@pytest.mark.parametrize("extra,needle", [
    (["--mode", "4:2"], "unknown mode '4:2'"),
    (["--mode", "channel", "--speedup", "0.5"], "--speedup must be > 1, got 0.5"),
    (["--speedup", "2"], "needs --mode channel"),
    (["--lr-scores", "0"], "--lr-scores must be > 0"),
])
def test_bad_mode_or_speedup(tmp_path, digits_model, extra, needle):
    _fails_cleanly(["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", *extra],
                   tmp_path / "run", needle)


def test_compress_without_model_or_with_both_model_and_resume(tmp_path, digits_model):
    _fails_cleanly(["compress", "--data", "digits"], tmp_path / "run", "compress needs MODEL and --data")
    _fails_cleanly(["compress", str(digits_model), "--resume", str(tmp_path / "x")], tmp_path / "run",
                   "either MODEL or --resume")


def test_export_with_an_unknown_precision_writes_nothing(digits_run):
    before = sorted(p.name for p in digits_run.iterdir())
    result = runner.invoke(app, ["export", str(digits_run), "--precision", "fp16,int4"])
    assert result.exit_code == 2 and "unknown precision 'int4'" in result.stderr
    assert sorted(p.name for p in digits_run.iterdir()) == before
