"""The accuracy benchmark's code path on a tiny real grid: JSON, resume, plot."""
from __future__ import annotations

import json

from bench.accuracy import grid, main, parse_args


def test_grid_gives_extra_seeds_only_where_asked():
    args = parse_args(["--model", "m", "--arch", "a", "--data", "d"])
    cells = grid(args)
    assert ("vpns", 0.9, 9) in cells and ("vpns", 0.5, 9) not in cells
    assert ("dense", None, 7) in cells and len([c for c in cells if c[0] == "hydra"]) == 4


def test_tiny_grid_writes_json_and_plot_and_resumes(tmp_path, digits_model, capsys):
    out = tmp_path / "accuracy.json"
    argv = ["--model", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
            "--methods", "dense,hydra,vpns,vpns_kd", "--sparsities", "0.9", "--seeds", "7", "--extra-seeds", "",
            "--epochs", "1", "--batch-size", "64", "--train-subset", "300", "--test-subset", "200",
            "--out", str(out), "--runs", str(tmp_path / "runs")]
    results = main(argv)
    saved = json.loads(out.read_text())
    assert set(saved["cells"]) == {"dense-seed7", "hydra-s0.9-seed7", "vpns-s0.9-seed7", "vpns_kd-s0.9-seed7"}
    vpns, hydra, dense = (saved["cells"][k] for k in ("vpns-s0.9-seed7", "hydra-s0.9-seed7", "dense-seed7"))
    # Same optimiser steps for every method (VPNs: 2 per batch; HYDRA 2x epochs; dense 4x epochs).
    assert vpns["optimizer_steps"] == hydra["optimizer_steps"] == dense["optimizer_steps"] > 0
    assert 0 <= vpns["top1_prompted"] <= 1 and abs(vpns["sparsity_achieved"] - 0.9) < 1e-4
    # The _kd cell is VPNs with --distill: same steps, a prompt, and stage 2 learns from the dense logits.
    from pipelines.run_dir import RunDir

    kd = saved["cells"]["vpns_kd-s0.9-seed7"]
    assert kd["optimizer_steps"] == vpns["optimizer_steps"] and kd["top1_prompted"] is not None
    kd_manifest = RunDir.open(tmp_path / "runs" / "vpns_kd-s0.9-seed7").manifest
    assert kd_manifest.config["distill"] is True
    assert RunDir.open(tmp_path / "runs" / "vpns-s0.9-seed7").manifest.config["distill"] is False
    targets = saved["summary"]["targets"]
    assert {"vpns_minus_hydra_at_0.9", "vpns_vs_dense_at_0.9", "vpns_stage1_step_over_finetune_step"} <= set(targets)
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "| VPNs | 0.9 |" in capsys.readouterr().out
    # Resume: a second call redoes nothing.
    again = main(argv)
    assert again["cells"] == results["cells"]


def test_step_time_bench_measures_every_step_kind(tmp_path, digits_model):
    from bench.step_time import main as step_main

    out = tmp_path / "steps.json"
    report = step_main(["--model", str(digits_model), "--arch", "digits_cnn", "--data", "digits",
                        "--steps", "3", "--warmup", "1", "--batch-size", "32", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["steps"]) == {"finetune", "vpns_stage1_prompted", "vpns_stage1_unprompted", "hydra_stage1"}
    assert all(v["steps"] == 3 and v["median_s"] > 0 for v in saved["steps"].values())
    assert report["ratio_vpns_stage1_over_finetune"] > 0


def test_shipped_top1_follows_the_validation_decision_not_the_test_split():
    """A VPNs cell ships prompted or plain as its last validation epoch decided, even where the other
    variant happens to score higher on test: taking the better of the two on test would select on it."""
    from bench.accuracy_summary import shipped_top1

    cell = {"top1_plain": 0.70, "top1_prompted": 0.72,
            "curve": [{"val_top1_plain": 0.66, "val_top1_prompted": 0.65}]}
    assert shipped_top1(cell) == 0.70
    cell["curve"][-1]["val_top1_prompted"] = 0.66  # a tie keeps the prompt (prompts.prompt_decision)
    assert shipped_top1(cell) == 0.72
    assert shipped_top1({"top1_plain": 0.5, "top1_prompted": None, "curve": []}) == 0.5


def test_time_to_hydra_follows_the_shipped_curve_not_the_faster_one():
    """'Time for VPNs to reach HYDRA's final top-1' is read off the curve of the model that ships (here the
    plain one, as validation decided), not whichever of prompted/plain gets there first on test."""
    from bench.accuracy_summary import summarise

    curve = [{"train_seconds_cum": 10.0, "top1_plain": 0.50, "top1_prompted": 0.61,
              "val_top1_plain": 0.5, "val_top1_prompted": 0.6},
             {"train_seconds_cum": 30.0, "top1_plain": 0.62, "top1_prompted": 0.63,
              "val_top1_plain": 0.66, "val_top1_prompted": 0.65}]
    cells = {"v": {"method": "vpns", "sparsity": 0.9, "seed": 7, "top1_plain": 0.62, "top1_prompted": 0.63,
                   "train_seconds": 30.0, "optimizer_steps": 8, "seconds_per_step": {}, "curve": curve},
             "h": {"method": "hydra", "sparsity": 0.9, "seed": 7, "top1_plain": 0.60, "top1_prompted": None,
                   "train_seconds": 40.0, "optimizer_steps": 8, "seconds_per_step": {}, "curve": []}}
    target = summarise({"cells": cells})["targets"]["vpns_time_to_hydra_final"]
    assert target["fraction_per_seed"] == [30.0 / 40.0] and target["met"] is False


def test_floor_summary_reports_the_floor_with_and_without_distillation(tmp_path):
    """bench.floor's row: VPNs >= both baselines, separately for the distilled trio, and each method's gain."""
    from bench.floor import markdown, summary

    def cell(method, top1):
        return {"method": method, "top1_plain": top1, "top1_prompted": None, "optimizer_steps": 32, "curve": []}

    cells = {m: cell(m, t) for m, t in (("dense", .8), ("magnitude", .55), ("hydra", .6), ("vpns", .62),
                                        ("magnitude_kd", .64), ("hydra_kd", .61), ("vpns_kd", .63))}
    (tmp_path / "2k-e1.json").write_text(json.dumps({"cells": cells}))
    row = summary(tmp_path)["2k-e1"]
    assert row["vpns_floor_met"] is True and row["vpns_kd_floor_met"] is False
    assert round(row["distill_gain"]["magnitude"], 4) == 0.09 and set(row["distill_gain"]) == {"magnitude", "hydra", "vpns"}
    line = markdown(summary(tmp_path), {"2k-e1": {"vpns": {"top1": 0.5}}}).splitlines()[-1]
    assert line.startswith("| 2k-e1 (32) | 80.00 | 55.00 | 60.00 | 62.00 (50.00) | met |") and line.endswith("| **not met** |")


def test_accuracy_compare_pairs_old_and_new_cells_and_averages_seeds(tmp_path, capsys):
    from bench.accuracy_compare import main as compare_main

    def cell(method, sp, seed, top1):
        return {"method": method, "sparsity": sp, "seed": seed, "top1_plain": top1, "top1_prompted": None, "curve": []}

    old = {"a": cell("magnitude", 0.9, 7, .79), "b": cell("magnitude", 0.9, 9, .80), "c": cell("vpns", 0.7, 7, .86)}
    first = {"a": cell("magnitude", 0.9, 7, .78), "b": cell("magnitude_kd", 0.9, 7, .81)}
    second = {"a": cell("magnitude", 0.9, 7, .10), "b": cell("vpns", 0.7, 7, .87)}  # the first file's cell wins
    for name, cells in (("old", old), ("new1", first), ("new2", second)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"cells": cells}))
    compare_main(["--old", str(tmp_path / "old.json"), "--new", str(tmp_path / "new1.json"), str(tmp_path / "new2.json"),
                  "--out", str(tmp_path / "cmp.json")])
    lines = capsys.readouterr().out.splitlines()
    assert "| 0.9 | magnitude + FT | 79.50 (seeds 7, 9) | 78.00 | -1.50 |" in lines
    assert "| 0.9 | magnitude + FT, distilled | — | 81.00 |  |" in lines
    assert "| 0.7 | VPNs | 86.00 | 87.00 | +1.00 |" in lines
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense", "magnitude", "magnitude_kd", "vpns"]
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
