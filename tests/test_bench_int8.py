"""bench/int8.py summarises real runs: a digits run exported in fp32 and int8 and reported."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import int8 as bench_int8
from pipelines.compare import report_runs
from pipelines.export_stage import run_export
from pipelines.recipe import load_recipe
from vpns_deploy.progress import Reporter


def test_int8_table_from_a_reported_run(tmp_path, digits_run, capsys):
    run = Path(shutil.copytree(digits_run, tmp_path / "digits-s0.9"))
    run_export(run, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=64)
    report_runs([run], latency_budget=0.3, reporter=Reporter(quiet=True), print_table=False)
    out = tmp_path / "int8.json"
    bench_int8.main(["--runs", str(run), "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["graph"] for r in result["rows"]] == ["dense", "compressed"]
    for r in result["rows"]:
        assert r["shipped"] and r["format"] in ("qdq", "qoperator") and r["activations"] == "uint8 asymmetric"
        assert 0 < r["int8_top1"] <= 1 and abs(r["drop_points"] - 100 * (r["fp32_top1"] - r["int8_top1"])) < 1e-9
        assert set(r["latency"]) == {"1", "64"} and all(v > 0 for v in r["int8_speed_vs_fp32"].values())
    assert result["commit"] and "int8 top-1" in result["markdown"] and out.with_suffix(".png").stat().st_size > 0
    assert result["markdown"] in capsys.readouterr().out


def test_int8_recipes_validate():
    for recipe in sorted((Path(bench_int8.ROOT) / "bench/recipes").glob("int8-*.toml")):
        assert load_recipe(recipe).export.precisions == ["fp32", "int8"], recipe
