"""bench/channel.py is a thin layer: its Torch-Pruning cell is the product's --method tp-groupnorm run."""
from __future__ import annotations

import json
from dataclasses import replace

from bench import channel, channel_plot
from pipelines.run_dir import RunDir


def test_tp_cell_is_a_product_run_with_the_benchmark_schema(tmp_path, digits_model):
    out, runs = tmp_path / "channel.json", tmp_path / "runs"
    channel.main(["--model", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--cells", "tp",
                  "--epochs", "1", "--round-to", "4", "--batch-size", "64", "--train-subset", "300",
                  "--test-subset", "100", "--val-fraction", "0", "--phase", "train", "--out", str(out),
                  "--runs", str(runs)])
    saved = json.loads(out.read_text())
    cell = saved["cells"]["tp"]
    for key in ("top1", "macs", "dense_macs", "params", "dense_params", "optimizer_steps", "train_seconds", "onnx",
                "wall_seconds", "macs_reduction"):  # the keys docs/benchmarks.md's tables read
        assert key in cell, key
    m = RunDir.open(runs / "tp").manifest
    assert m.method_name == "tp-groupnorm" and m.mode == "channel"
    assert [e["stage"] for e in m.metrics["epochs"]] and all(e["stage"] != "mask" for e in m.metrics["epochs"])
    assert cell["macs"] == m.metrics["structure"]["macs"]["compressed"] and cell["macs_reduction"] > 1.5
    assert 0 < cell["top1"] <= 1 and (runs / "tp" / "model.onnx").is_file()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot beside the JSON
    assert cell["top1"] == m.metrics["top1_plain"]  # no prompt: the plain network is what ships
    # --val-fraction 0 is the budget of the committed 2026-11-24 cells (no validation split): not named
    assert m.config["val_fraction"] == 0 and "val_fraction" not in saved["budget"]
    assert channel.budget(channel.parse_args([*BASE, "--val-fraction", "0.05"]))["val_fraction"] == 0.05


BASE = ["--model", "m.pt", "--arch", "digits_cnn", "--data", "digits"]


def test_distilled_cells_differ_from_their_base_cell_only_in_distillation():
    args = channel.parse_args([*BASE, "--epochs", "2"])
    for kd, base in (("vpns_kd", "vpns"), ("tp_steps_kd", "tp_steps"), ("vpns_tune_kd", "vpns_tune")):
        a, b = channel._cell_config(args, kd), channel._cell_config(args, base)
        assert a.distill is True and b.distill is False and replace(a, distill=False) == b
    assert channel._cell_config(args, "tp_steps_kd").epochs_tune == 8  # equal total steps with VPNs' 2 + 2


def test_half_stage_1_cell_and_its_torch_pruning_cell_spend_the_same_steps():
    args = channel.parse_args([*BASE, "--epochs", "2"])
    half, tp = channel._cell_config(args, "vpns_half"), channel._cell_config(args, "tp_3e")
    batches = 196  # CIFAR-10's 50k images at batch 256
    vpns_steps = (half.epochs_mask * round(batches * half.mask_batches_fraction) + half.epochs_tune * batches) * 2
    assert vpns_steps == tp.tune_epochs_effective * batches == 6 * batches


def test_tune_only_cell_spends_tp_steps_budget_plus_one_batch():
    from vpns_deploy.trainer import epoch_batches

    args = channel.parse_args([*BASE, "--epochs", "2"])
    tune, tp = channel._cell_config(args, "vpns_tune"), channel._cell_config(args, "tp_steps")
    for batches in (176, 196):  # with and without the 10 % validation split
        mask_batches = epoch_batches(batches, tune.mask_batches_fraction)
        assert mask_batches == 1
        steps = (tune.epochs_mask * mask_batches + tune.epochs_tune * batches) * 2
        assert steps == tp.tune_epochs_effective * batches + 2 * tune.epochs_mask
    assert tune.method == "vpns" and tune.channel_init == tp.channel_init == "group_norm"


def test_plot_series_join_each_family_in_step_order():
    cells = {"tp_steps": (784, 0.81), "vpns": (784, 0.80), "tp_3e": (588, 0.80), "vpns_half": (588, 0.79),
             "vpns_kd": (784, 0.78), "odd": (10, 0.5)}
    results = {"cells": {k: {"optimizer_steps": s, "top1": t} for k, (s, t) in cells.items()}}
    got = channel_plot.series(results)
    assert [p[2] for p in got["Torch-Pruning + fine-tune"]] == ["tp_3e", "tp_steps"]
    assert [p[2] for p in got["VPNs"]] == ["vpns_half", "vpns"] and got["VPNs"][1][1] == 80.0
    assert got["VPNs, distilled"] == [(784, 78.0, "vpns_kd")] and got["odd"] == [(10, 50.0, "odd")]
