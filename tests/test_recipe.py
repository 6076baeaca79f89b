"""Recipes: every mistake is a one-line error naming the key; a finished recipe re-runs as a no-op."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import DIGITS_RECIPE
from pipelines.recipe import load_recipe
from pipelines.cli import app
from vpns_deploy.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOOD = DIGITS_RECIPE + """[compress.optim]
lr_prompt_mask = 1e-3
[export]
prompt = true
[report]
enabled = true
latency_budget = 1
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def _good(tmp_path, model="m.pt") -> str:
    return GOOD.format(out=tmp_path / "run", model=model)


def test_shipped_recipes_validate():
    recipes = {p.stem: load_recipe(p) for p in sorted((ROOT / "recipes").glob("*.toml"))}
    assert {"digits-demo", "resnet20-unstructured-90", "resnet56-channel-2x", "resnet20-2of4"} <= set(recipes)
    assert recipes["resnet56-channel-2x"].compress.mode == "channel"
    assert recipes["resnet56-channel-2x"].compress.speedup == 2.0
    assert recipes["resnet20-2of4"].compress.pattern == (2, 4)
    assert recipes["resnet20-2of4"].export.precisions == ["fp32", "fp16", "int8"]


def test_good_recipe_parses_nested_optimiser(tmp_path):
    recipe = load_recipe(_write(tmp_path, _good(tmp_path)))
    assert recipe.compress.optim.lr_prompt_mask == 1e-3 and recipe.compress.optim.lr_weights == 0.01


@pytest.mark.parametrize("edit,needle", [
    (("sparsity = 0.9", "sparsity = 1.2"), "[compress] sparsity must lie strictly between 0 and 1"),
    (("sparsity = 0.9", "sparsity = 'high'"), "compress.sparsity must be float"),
    (("epochs_mask = 1", "epoch_mask = 1"), "unknown key compress.epoch_mask"),
    (("[report]", "[reprot]"), "unknown section [reprot]"),
    (("lr_prompt_mask = 1e-3", "lr_prompt = 1e-3"), "unknown key compress.optim.lr_prompt"),
    (('spec = "digits"', "spec = 3"), "data.spec must be str"),
    (("sparsity = 0.9", 'method = "obd"'), "compress.method must be one of 'vpns', 'hydra', 'magnitude'"),
    (('arch = "digits_cnn"', "arch = true"), "model.arch must be str"),
    (("epochs_tune = 1", "epochs_tune = 1.5"), "compress.epochs_tune must be int"),
    (("prompt = true", 'prompt = true\nprecisions = ["fp32", "int4"]'), "unknown precision 'int4' in export.precisions"),
    (("prompt = true", 'prompt = true\nprecisions = "int8"'), "export.precisions must be list"),
    (("sparsity = 0.9", 'sparsity = 0.9\nmode = "3:2"'), "unknown mode '3:2'"),
    (("sparsity = 0.9", "sparsity = 0.9\nspeedup = 2.0"), "--speedup needs --mode channel"),
])
def test_recipe_mistakes_name_the_key(tmp_path, edit, needle):
    text = _good(tmp_path).replace(*edit)
    with pytest.raises(UserError) as info:
        load_recipe(_write(tmp_path, text))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_section_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match=r"missing section \[data\]"):
        load_recipe(_write(tmp_path, _good(tmp_path).replace('[data]\nspec = "digits"\n', "")))
    with pytest.raises(UserError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "[run\nout="))


def test_run_executes_every_stage_then_skips_them(tmp_path, digits_model):
    recipe = _write(tmp_path, _good(tmp_path, model=digits_model))
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(recipe)])
    assert first.exit_code == 0, first.output
    assert "ran compress, export, report" in first.stdout and "top-1, ONNX Runtime" in first.stdout
    for name in ("model.pt", "model.onnx", "report.json", "report.md"):
        assert (tmp_path / "run" / name).is_file()
    second = runner.invoke(app, ["run", str(recipe)])
    assert second.exit_code == 0 and "every stage was already done" in second.stdout


def test_invalid_recipe_runs_nothing(tmp_path, digits_model):
    recipe = _write(tmp_path, _good(tmp_path, model=digits_model).replace("sparsity = 0.9", "sparsity = 0"))
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "sparsity" in result.stderr
    assert not (tmp_path / "run").exists()


GRID = DIGITS_RECIPE + """[grid]
variants = [
  {{ name = "vpns-seed7", "compress.seed" = 7 }},
  {{ name = "hydra-seed9", "compress.method" = "hydra", "compress.seed" = 9, "compress.optim.lr_scores" = 1e-3 }},
]
"""


def _grid(tmp_path, model="m.pt", text=GRID) -> Path:
    return _write(tmp_path, text.format(out=tmp_path / "grid", model=model))


def test_grid_variants_change_only_their_fields(tmp_path):
    from pipelines.recipe import load_grid

    grid = load_grid(_grid(tmp_path))
    assert [v.name for v in grid.variants] == ["vpns-seed7", "hydra-seed9"]
    first, second = (v.recipe for v in grid.variants)
    assert first.out == tmp_path / "grid" / "vpns-seed7" and second.out == tmp_path / "grid" / "hydra-seed9"
    assert (first.compress.method, first.compress.seed, first.compress.optim.lr_scores) == ("vpns", 7, None)
    assert (second.compress.method, second.compress.seed, second.compress.optim.lr_scores) == ("hydra", 9, 1e-3)
    assert second.compress.sparsity == 0.9 and second.compress.optim.lr_weights == first.compress.optim.lr_weights


@pytest.mark.parametrize("edit,needle", [
    (('"compress.seed" = 7', '"compress.sed" = 7'), "grid variant 'vpns-seed7': unknown key compress.sed"),
    (('"compress.seed" = 7', '"compres.seed" = 7'), "grid variant 'vpns-seed7': unknown field 'compres.seed'"),
    (('"compress.seed" = 9', '"compress.sparsity" = 1.5'), "grid variant 'hydra-seed9': [compress] sparsity"),
    (('"compress.seed" = 9', '"compress.seed" = "nine"'), "grid variant 'hydra-seed9': compress.seed must be int"),
    (('name = "hydra-seed9"', 'name = "vpns-seed7"'), "grid variant 'vpns-seed7' is named twice"),
    (('name = "hydra-seed9"', 'name = "../up"'), "grid variant name '../up' is not a folder name"),
    (('"compress.seed" = 7', '"run.out" = "elsewhere"'), "a variant cannot set run.out"),
    (("variants = [", "variant = ["), "unknown key grid.variant"),
    (('{ name = "vpns-seed7", ', "{ "), "grid.variants[0] needs a name"),
])
def test_grid_mistakes_name_the_variant_and_nothing_runs(tmp_path, digits_model, edit, needle):
    recipe = _grid(tmp_path, digits_model, GRID.replace(*edit))
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "grid").exists()


def test_grid_runs_every_variant_then_skips_finished_ones(tmp_path, digits_model):
    import json

    recipe = _grid(tmp_path, digits_model)
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(recipe)])
    assert first.exit_code == 0, first.output
    assert "[1/2] vpns-seed7" in first.stdout and "[2/2] hydra-seed9" in first.stdout
    for name, method, seed in (("vpns-seed7", "vpns", 7), ("hydra-seed9", "hydra", 9)):
        manifest = json.loads((tmp_path / "grid" / name / "manifest.json").read_text())
        assert (manifest["config"]["method"], manifest["config"]["seed"]) == (method, seed)
    # one more variant: the finished two are skipped, only the new one runs
    recipe.write_text(recipe.read_text().replace(
        "\n]\n", '\n  { name = "magnitude-seed7", "compress.method" = "magnitude", "compress.seed" = 7 },\n]\n'))
    second = runner.invoke(app, ["run", str(recipe)])
    assert second.exit_code == 0, second.output
    assert second.stdout.count("every stage was already done") == 2
    assert f"{tmp_path / 'grid' / 'magnitude-seed7'}: ran compress" in second.stdout


def test_a_plain_recipe_is_a_grid_of_one(tmp_path):
    from pipelines.recipe import load_grid

    grid = load_grid(_write(tmp_path, _good(tmp_path)))
    assert len(grid.variants) == 1 and grid.variants[0].recipe.out == tmp_path / "run"
    with pytest.raises(UserError, match="is a grid recipe"):
        load_recipe(_grid(tmp_path))
