"""bench/int8.py summarises real runs: a digits run exported in fp32 and int8 and reported."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import int8 as bench_int8
from pipelines.compare import report_runs
from pipelines.export_stage import run_export
from pipelines.recipe import load_grid
from vpns_deploy.progress import Reporter


def test_int8_table_from_a_reported_run(tmp_path, digits_run, capsys):
    run = Path(shutil.copytree(digits_run, tmp_path / "digits-s0.9"))
    run_export(run, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=64)
    report_runs([run], latency_budget=0.3, reporter=Reporter(quiet=True), print_table=False)
    recipe = tmp_path / "int8.toml"
    recipe.write_text(f'[run]\nout = "{tmp_path}"\n[model]\npath = "m.pt"\narch = "digits_cnn"\n[data]\nspec = "digits"\n'
                      '[compress]\n[grid]\nvariants = [{ name = "digits-s0.9" }]\n')
    bench_int8.main(["--recipe", str(recipe), "--out", str(tmp_path / "results")])
    result = json.loads((tmp_path / "results" / "int8.json").read_text())
    assert [r["graph"] for r in result["rows"]] == ["dense", "compressed"]
    for r in result["rows"]:
        assert r["shipped"] and r["format"] in ("qdq", "qoperator") and r["activations"] == "uint8 asymmetric"
        assert 0 < r["int8_top1"] <= 1 and abs(r["drop_points"] - 100 * (r["fp32_top1"] - r["int8_top1"])) < 1e-9
        assert set(r["latency"]) == {"1", "64"} and all(v > 0 for v in r["int8_speed_vs_fp32"].values())
    (group,) = result["measured"]
    assert group["commit"] and group["runs"] == ["digits-s0.9"] and group["command"] == f"vpns-deploy run {recipe}"
    assert "int8 top-1" in result["markdown"]["int8"] and (tmp_path / "results" / "int8.png").stat().st_size > 0
    assert result["markdown"]["int8"] in capsys.readouterr().out


def test_int8_grid_keeps_the_run_directories():
    grid = load_grid(Path(bench_int8.__file__).resolve().parents[1] / "bench/recipes/int8.toml")
    assert {str(v.recipe.out) for v in grid.variants} == {
        f"bench/runs/int8/{name}" for name in ("resnet20-s0.9", "resnet56-channel-2x", "lite0-transfer-s0.7")}
    assert all(v.recipe.export.precisions == ["fp32", "int8"] and v.recipe.report for v in grid.variants)
