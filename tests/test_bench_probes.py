"""bench/probes/prompt_travel.py on a real VPNs run: what it reads, and the Adam bound it states."""
from __future__ import annotations

import json

import pytest


def test_prompt_travel_reads_a_real_run_and_states_stage_ones_bound(digits_run, tmp_path):
    from bench.probes.prompt_travel import main, reference_stage1_bound, travel

    row = travel(digits_run)
    manifest = json.loads((digits_run / "manifest.json").read_text())
    mask_steps = sum(e["optimizer_steps"] for e in manifest["metrics"]["epochs"] if e["stage"] == "mask")
    assert row["optimizer_steps"]["mask"] == mask_steps > 0
    assert row["prompt_trains_in"] == "both"  # the default: stage 1's bound applies
    # the prompt steps on the prompted pass only: half of a two-pass stage's optimiser steps
    assert row["stage1_prompted_steps"] == mask_steps // 2
    assert row["stage1_adam_bound"] == mask_steps // 2 * manifest["config"]["optim"]["lr_prompt_mask"]
    # 196 prompted steps an epoch; 15 epochs at 1e-4, 6 at 1e-5, 9 at 1e-6
    assert row["reference_stage1_adam_bound"] == pytest.approx(196 * (15e-4 + 6e-5 + 9e-6)) == reference_stage1_bound()
    assert row["frame_values"] > 0 and 0 < row["mean_abs"] <= row["max_abs"]  # stage 2 moved the frame
    assert 0.0 <= row["share_at_least_one_level"] <= 1.0
    out = tmp_path / "travel.json"
    main([str(digits_run), str(tmp_path / "not-a-run"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["run"] for r in saved["runs"]] == [str(digits_run)]  # a folder without prompt.pt is left out


def test_transfer_probe_cells_change_only_their_settings(tmp_path):
    """A probe cell is the VPNs cell with only its own settings changed; an unknown cell is refused up front."""
    import pytest

    from bench.transfer import PROBES, config_for, main, parse_args, probe_cells
    from bench.transfer_summary import label

    args = parse_args(["--out", str(tmp_path / "t.json")])
    vpns = config_for(args, "vpns", 0.9, 7).to_dict()
    for method, sparsity, seed in probe_cells():
        probe = config_for(args, method, sparsity, seed).to_dict()
        changed = {k: v for k, v in probe.items() if k != "optim" and vpns[k] != v}
        changed |= {k: v for k, v in probe["optim"].items() if vpns["optim"][k] != v}
        assert (sparsity, seed, probe["method"]) == (0.9, 7, "vpns")
        assert changed == PROBES[method], method
        assert "(probe)" in label(method) and next(iter(PROBES[method])) in label(method)
    with pytest.raises(SystemExit, match="unknown cell vpns-s0.3-seed1"):
        main(["--out", str(tmp_path / "t.json"), "--cells", "vpns-s0.3-seed1"])
    assert not (tmp_path / "t").exists()


def test_transfer_targets_compare_the_shipped_models():
    """The transfer table's margins use the model each cell ships (prompt or not as its validation
    decided), never the better of prompted/plain on test."""
    from bench.transfer_summary import markdown, rows, targets

    def cell(method, plain, prompted, fold):
        return {"method": method, "sparsity": 0.9, "seed": 7, "top1_plain": plain, "top1_prompted": prompted,
                "prompt_decision": {"fold": fold}, "optimizer_steps": 10, "train_seconds": 1.0}

    table = rows({"a": cell("vpns", 0.70, 0.75, False), "b": cell("vpns-zero", 0.68, 0.68, True),
                  "c": cell("hydra", 0.60, None, False)})
    t = targets(table)
    assert round(t["vpns_minus_zero_prompt_at_0.9"]["margin_points"], 6) == 2.0  # 70 (plain ships) - 68
    assert round(t["vpns_minus_hydra_at_0.9"]["margin_points"], 6) == 10.0
    assert t["dense_minus_vpns_at_0.7"]["met"] is None  # not measured yet
    table07 = rows({"a": cell("vpns", 0.80, 0.81, True) | {"sparsity": 0.7},
                    "b": cell("vpns-zero", 0.79, 0.79, True) | {"sparsity": 0.7}})
    context = targets(table07)["vpns_minus_zero_prompt_at_0.7"]  # reported, no target to meet
    assert round(context["margin_points"], 6) == 2.0 and context["target"] is None and context["met"] is None
    assert "| 70.00 | 75.00 | 70.00 |" in markdown(table)


def test_transfer_plot_orders_grid_before_probes_and_renders_a_png(tmp_path):
    """Rows: the grid's methods in its order at 0.9, probes after them, then 0.7, the dense run last;
    the two-panel PNG is written from real-shaped cell records (a probe, two seeds, dense)."""
    from bench.transfer_summary import plot, rows

    def cell(method, sparsity, seed, top1):
        curve = [{"stage": s, "optimizer_steps": 5, "val_acc_plain": top1 - d, "test_acc_plain": None}
                 for s, d in (("mask", 0.05), ("tune", 0.0))]
        return {"method": method, "sparsity": sparsity, "seed": seed, "top1_plain": top1, "top1_prompted": None,
                "prompt_decision": None, "optimizer_steps": 10, "train_seconds": 1.0, "curve": curve}

    cells = {"d": cell("dense", None, 7, 0.84), "p": cell("vpns-pad18", 0.9, 7, 0.76),
             "h": cell("hydra", 0.9, 7, 0.77), "v7": cell("vpns", 0.7, 7, 0.82),
             "a": cell("vpns", 0.9, 7, 0.77), "b": cell("vpns", 0.9, 9, 0.76)}
    order = [(r["method"], r["sparsity"]) for r in rows(cells)]
    assert order == [("vpns", 0.9), ("hydra", 0.9), ("vpns-pad18", 0.9), ("vpns", 0.7), ("dense", None)]
    png = tmp_path / "t.png"
    plot(cells, rows(cells), png, "title")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_ort_spinning_probe_times_alone_and_interleaved_both_ways(tmp_path):
    """bench/probes/ort_spinning.py on two real (tiny) graphs: one row per batch and spinning setting."""
    import onnx
    from onnx import TensorProto, helper

    from bench.probes.ort_spinning import main

    for name in ("a", "b"):
        graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], name,
                                  [helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", 4, 4, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    out = main([str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--batches", "1:3,2:3",
                "--out", str(tmp_path / "spin.json")])
    saved = json.loads((tmp_path / "spin.json").read_text())
    assert saved == out and [(r["batch"], r["spinning"]) for r in out["rows"]] == [
        (1, True), (1, False), (2, True), (2, False)]
    assert all(r["alone_ms"] > 0 and r["interleaved_ms"] > 0 for r in out["rows"])


def test_stream_memory_probe_refuses_a_missing_work_folder(tmp_path, capsys):
    """bench/probes/stream_memory.py needs bench.data_pipeline's generated folder: a one-line error without it."""
    import pytest

    from bench.probes.stream_memory import command, main

    with pytest.raises(SystemExit, match=r"^error: .* run `python -m bench.data_pipeline` first$"):
        main(["--work", str(tmp_path)])
    cmd = command(tmp_path, tmp_path / "run")
    assert cmd[cmd.index("--memory-budget") + 1] == "0" and cmd[cmd.index("--workers") + 1] == "1"


def test_bn_statistics_probe_rebuilds_the_runs_test_split(digits_run, tmp_path):
    """bench/probes/bn_statistics.py on a real run: its "saved" top-1 is the one compress recorded, so the
    data and network it re-estimates are the run's own; every variant is measured."""
    import pytest

    from bench.probes.bn_statistics import main
    from pipelines.run_dir import RunDir

    out = main([str(digits_run), "--images", "128", "--out", str(tmp_path / "bn.json")])
    metrics = RunDir.open(digits_run).manifest.metrics
    assert out["saved"][0] == pytest.approx(metrics["top1_plain"])
    assert out["saved"][1] == pytest.approx(metrics["top1_prompted"])
    assert all(0 <= v <= 1 for k in ("augmented", "unaugmented", "test") for v in out[k])
    assert json.loads((tmp_path / "bn.json").read_text())["command"].startswith("python -m bench.probes.bn_statistics")
