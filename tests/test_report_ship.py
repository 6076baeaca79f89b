"""report says what to ship: every graph timed in one interleaved measurement, the fastest compressed graph
within the export's tolerance named first with its speedup over dense fp32; several runs compared by their
within-run ratios; a readable per-layer plot."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.compare import report_runs
from pipelines.export_stage import run_export
from pipelines.plots import LAYERS_SHOWN, shown_layers
from vpns_deploy.progress import Reporter


@pytest.fixture(scope="module")
def int8_reported(tmp_path_factory, digits_run) -> Path:
    run = Path(shutil.copytree(digits_run, tmp_path_factory.mktemp("ship") / "run"))
    run_export(run, reporter=Reporter(quiet=True), precisions=("fp32", "int8"), calib_images=64)
    report_runs([run], latency_budget=0.5, reporter=Reporter(quiet=True), print_table=False)
    return run


def test_report_names_the_graph_to_ship_from_one_measurement(int8_reported):
    report = json.loads((int8_reported / "report.json").read_text())
    ship = report["shipping"]
    assert set(ship["candidates"]) == {"compressed", "compressed int8"}
    for b, best in ship["best"].items():
        c = ship["candidates"][best]
        assert c["within_tolerance"]
        assert c["speedup_vs_dense_fp32"][b]["speedup"] == max(  # the fastest of those within tolerance
            x["speedup_vs_dense_fp32"][b]["speedup"] for x in ship["candidates"].values() if x["within_tolerance"])
        lo, hi = c["speedup_vs_dense_fp32"][b]["ci95"]
        assert lo <= c["speedup_vs_dense_fp32"][b]["speedup"] <= hi
    # the int8 rows come from the same interleaved measurement as fp32: the same seconds per graph (a faster
    # graph makes more timed calls in its turns)
    seconds = {report["latency_ms"]["dense"]["1"]["seconds"],
               report["precision"]["int8"]["compressed"]["latency_ms"]["1"]["seconds"]}
    assert len(seconds) == 1
    first = ship["best"][next(iter(ship["best"]))]
    shipped_file = "model.int8.onnx" if first == "compressed int8" else "model.onnx"
    md = (int8_reported / "report.md").read_text()
    assert md.split("\n")[4].startswith(f"**Ship {shipped_file}:") and "faster than dense.onnx (fp32, what you had) by " in md
    assert "Unstructured zeros make no graph faster" in md
    assert f"Ship {shipped_file}:" in (int8_reported / "report.html").read_text()


def test_several_runs_compare_within_run_ratios(int8_reported, tmp_path):
    other = Path(shutil.copytree(int8_reported, tmp_path / "other"))
    out = report_runs([int8_reported, other], out=tmp_path / "cmp", latency_budget=0.5,
                      reporter=Reporter(quiet=True), print_table=False)
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    latency = [r for r in rows if r[0].startswith("ORT CPU latency, batch 1")]
    assert latency and latency[0][1] == "—" and all(" -> " in cell for cell in latency[0][2:])


def test_per_layer_plot_shows_the_largest_layers_in_network_order():
    layers = [{"name": f"l{i}", "total": (i * 37) % 101, "sparsity": 0.5} for i in range(60)]
    shown = shown_layers(layers)
    assert len(shown) == LAYERS_SHOWN
    assert min(x["total"] for x in shown) >= sorted((x["total"] for x in layers), reverse=True)[LAYERS_SHOWN - 1]
    assert [x["name"] for x in shown] == [x["name"] for x in layers if x in shown]
    assert shown_layers(layers[:10]) == layers[:10]
