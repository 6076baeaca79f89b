"""One path, one "done": every command is a stage of the same graph, skipped when the manifest records
it with the fingerprint asked for now and every file it read and wrote verifies (real runs, real CLI)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.run_dir import RunDir

runner = CliRunner()


def _snapshot(run: Path) -> dict[str, tuple[int, str]]:
    """Every file of the run with its modification time and content digest."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run.iterdir()) if p.is_file()}


def _export(run: Path, *extra: str):
    return runner.invoke(app, ["export", str(run), *extra])


@pytest.fixture()
def run(tmp_path, digits_run) -> Path:
    """A private copy of conftest's exported run (compress, then export with the default settings)."""
    return Path(shutil.copytree(digits_run, tmp_path / "run"))


def test_export_again_with_the_same_settings_skips_and_touches_nothing(run):
    before = _snapshot(run)
    result = _export(run)  # the settings conftest exported with: the run's prompt decision, fp32
    assert result.exit_code == 0, result.output
    assert "[export] done earlier, outputs verified: skipped" in result.stderr
    assert _snapshot(run) == before  # no graph, no manifest rewritten


def test_a_changed_export_setting_exports_again_then_skips(run):
    first = RunDir.open(run).manifest.stages["export"].fingerprint
    result = _export(run, "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert "done earlier" not in result.stderr
    m = RunDir.open(run).manifest
    assert m.export.precisions == ["fp32", "fp16"] and (run / "model.fp16.onnx").is_file()
    assert m.stages["export"].fingerprint != first and "model.fp16.onnx" in m.stages["export"].outputs
    before = _snapshot(run)
    again = _export(run, "--precision", "fp16")
    assert again.exit_code == 0 and "done earlier" in again.stderr and _snapshot(run) == before


def test_a_modified_output_is_made_again(run):
    with open(run / "model.onnx", "ab") as f:
        f.write(b"\0")  # the graph no longer matches its recorded sha256
    result = _export(run)
    assert result.exit_code == 0, result.output
    assert "done earlier" not in result.stderr
    RunDir.open(run).verified("model.onnx")  # re-made: matches the manifest again


def test_a_modified_input_is_refused_in_one_line(run):
    with open(run / "model.pt", "ab") as f:
        f.write(b"\0")  # what export reads: never taken for done, never exported from
    result = _export(run)
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(err) == 1 and "does not match the sha256" in err[0], result.stderr


def test_report_skips_when_current_and_measures_again_on_a_changed_setting_or_graph(run):
    args = ["report", str(run), "--latency-budget", "0.5"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    before = _snapshot(run)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "[report] done earlier" in again.stderr
    assert _snapshot(run) == before  # nothing measured, no page redrawn, no manifest rewritten
    budget = runner.invoke(app, ["report", str(run), "--latency-budget", "0.6"])
    assert budget.exit_code == 0 and "done earlier" not in budget.stderr
    assert json.loads((run / "report.json").read_text())["machine"]["latency_budget_s"] == 0.6
    assert _export(run, "--precision", "fp16").exit_code == 0  # a re-made export: the report is stale
    stale = runner.invoke(app, ["report", str(run), "--latency-budget", "0.6"])
    assert stale.exit_code == 0 and "done earlier" not in stale.stderr
    assert "fp16" in json.loads((run / "report.json").read_text())["precision"]


def test_compress_again_with_the_same_settings_skips(tmp_path, digits_run, digits_model):
    """The command conftest's run was made with (through the library) is done: nothing is trained or written."""
    run = Path(shutil.copytree(digits_run, tmp_path / "run"))
    before = _snapshot(run)
    args = ["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--sparsity", "0.9",
            "--epochs-mask", "1", "--epochs-tune", "1", "--batch-size", "64", "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[compress] done earlier" in result.stderr and _snapshot(run) == before
    other = runner.invoke(app, [*args[:-2], "--seed", "1", "--out", str(run)])  # another run: not replaced
    assert other.exit_code == 2 and "holds a run made with other settings" in other.stderr
    assert _snapshot(run) == before


def test_a_schema_2_run_gets_its_compress_record_and_exports_once_more(run):
    """Schema 2 had no stage records: the upgrade records compress from the run's fingerprint and files;
    export had no fingerprint, so it runs once and is done from then on."""
    mf = run / "manifest.json"
    m = json.loads(mf.read_text())
    mf.write_text(json.dumps({k: v for k, v in m.items() if k != "stages"} | {"schema": 2}))
    upgraded = RunDir.open(run).manifest
    assert set(upgraded.stages) == {"compress"} and upgraded.stages["compress"].fingerprint == m["fingerprint"]
    assert {"model.pt", "dense.pt", "masks.pt"} <= set(upgraded.stages["compress"].outputs)
    first = _export(run)
    assert first.exit_code == 0 and "done earlier" not in first.stderr, first.output
    assert json.loads(mf.read_text())["schema"] == 3 and "export" in RunDir.open(run).manifest.stages
    assert "done earlier" in _export(run).stderr


def test_train_is_the_pretrain_stage_and_refuses_what_it_would_overwrite(tmp_path):
    import torch

    out = tmp_path / "dense.pt"
    args = ["train", "--arch", "digits_cnn", "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "digits_cnn trained on digits: test top-1" in result.stdout, result.output
    state = torch.load(out, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    before = out.read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.stderr and out.read_bytes() == before
    bad = runner.invoke(app, [*args[:-3], "--lr", "nan", "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()


def test_a_recipe_pretrains_the_missing_model_then_compresses_then_skips_both(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
[run]
out = "{tmp_path / 'run'}"
[model]
path = "{tmp_path / 'dense.pt'}"
arch = "digits_cnn"
[data]
spec = "digits"
[pretrain]
epochs = 1
[compress]
method = "magnitude"
epochs_mask = 0
epochs_tune = 1
batch_size = 64
train_subset = 300
""")
    first = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert first.exit_code == 0 and "ran pretrain, compress" in first.stdout, first.output
    assert (tmp_path / "dense.pt").is_file() and RunDir.open(tmp_path / "run").manifest.stages["compress"]
    before = _snapshot(tmp_path / "run")
    again = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert again.exit_code == 0 and "every stage was already done" in again.stdout
    assert _snapshot(tmp_path / "run") == before
