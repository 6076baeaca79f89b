"""The run contract (manifest schema, one fingerprint) and options generated once from the configuration."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.manifest import SCHEMA_VERSION
from pipelines.run_dir import RunDir

runner = CliRunner()


def _copy(run: Path, to: Path, edit=None) -> Path:
    shutil.copytree(run, to)
    if edit is not None:
        mf = to / "manifest.json"
        mf.write_text(json.dumps(edit(json.loads(mf.read_text()))))
    return to


def test_schema_1_manifest_loads_through_the_upgrade_with_the_same_fingerprint(tmp_path, digits_run):
    """A run written before schema 2 (no fingerprint) opens, and its computed fingerprint is the one
    compress records today: an old finished run still counts as done for the same settings."""
    recorded = RunDir.open(digits_run).manifest.fingerprint
    old = _copy(digits_run, tmp_path / "old", lambda m: {k: v for k, v in m.items() if k != "fingerprint"} | {"schema": 1})
    manifest = RunDir.open(old).manifest
    assert manifest.schema == SCHEMA_VERSION and manifest.fingerprint == recorded


@pytest.mark.parametrize("schema,needle", [(None, "has no schema version"), (99, "has schema 99")])
def test_unversioned_or_future_manifest_is_refused_in_one_line(tmp_path, digits_run, schema, needle):
    def edit(m: dict) -> dict:
        m = {k: v for k, v in m.items() if k != "schema"}
        return m if schema is None else m | {"schema": schema}

    run = _copy(digits_run, tmp_path / "run", edit)
    before = sorted(p.name for p in run.iterdir())
    for command in ("export", "report"):
        result = runner.invoke(app, [command, str(run)])
        err = result.stderr.strip()
        assert result.exit_code == 2 and len(err.splitlines()) == 1 and needle in err, (result.exit_code, err)
        assert "re-create it" in err or "use the vpns-deploy that made the run" in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_one_fingerprint_for_done_and_resume(tmp_path, digits_run, digits_model):
    """The digest a checkpoint must match to be resumed is the one the recipe's done check compares:
    the same settings are done, another seed is not, and the worker count (never changes a result)
    does not matter."""
    from dataclasses import replace

    from pipelines.recipe import DataSection, ModelSection, Recipe, RunSection
    from pipelines.stages import _compress_done, plan_from_recipe
    from vpns_deploy.config import CompressConfig

    cfg = CompressConfig(sparsity=0.9, epochs_mask=1, epochs_tune=1, batch_size=64)  # as conftest's digits_run

    def recipe(c: CompressConfig):
        return plan_from_recipe(Recipe(Path("<test>"), RunSection(str(digits_run)),
                                       ModelSection(str(digits_model), "digits_cnn"), DataSection("digits"), c))

    assert _compress_done(recipe(cfg))
    assert _compress_done(recipe(replace(cfg, workers=3)))
    assert not _compress_done(recipe(replace(cfg, seed=cfg.seed + 1)))


def _params(command: str) -> dict[str, click.Parameter]:
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


def test_compress_and_sweep_options_come_from_the_config_dataclasses():
    """Every shared option exists once in the source: its help and default are the dataclass field's,
    identical in both commands."""
    from pipelines.cli_options import HEAD_OPTIONS, METHOD_OPTIONS, MODEL_OPTIONS, TRAINING_OPTIONS

    compress, sweep = _params("compress"), _params("sweep")
    for cls, name in (*MODEL_OPTIONS, *METHOD_OPTIONS, *TRAINING_OPTIONS, *HEAD_OPTIONS):
        field = next(f for f in fields(cls) if f.name == name)
        for params in (compress, sweep):
            assert params[name].help == field.metadata["help"] and params[name].default == field.default, name
    assert compress["sparsity"].default == 0.9 and sweep["sparsity"].default == "0.5,0.7,0.9"  # own options stay
    assert compress["model"].param_type_name == "argument" and compress["trust_pickle"].opts == ["--trust-pickle"]


def test_generated_options_reach_the_config(tmp_path, digits_model):
    """A value given on the command line arrives in the run's CompressConfig (checked before any
    work: a bad one is refused by the dataclass, in one line)."""
    result = runner.invoke(app, ["compress", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
                                 "--epochs-mask", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "needs at least one mask-finding epoch" in result.stderr
    result = runner.invoke(app, ["sweep", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
                                 "--lr-scores", "-1", "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 2 and "--lr-scores must be > 0" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
