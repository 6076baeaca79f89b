"""bench/channel.py is a thin layer: its Torch-Pruning cell is the product's --method tp-groupnorm run."""
from __future__ import annotations

import json

from bench import channel
from pipelines.run_dir import RunDir


def test_tp_cell_is_a_product_run_with_the_benchmark_schema(tmp_path, digits_model):
    out, runs = tmp_path / "channel.json", tmp_path / "runs"
    channel.main(["--model", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--cells", "tp",
                  "--epochs", "1", "--round-to", "4", "--batch-size", "64", "--train-subset", "300",
                  "--test-subset", "100", "--phase", "train", "--out", str(out), "--runs", str(runs)])
    cell = json.loads(out.read_text())["cells"]["tp"]
    for key in ("top1", "macs", "dense_macs", "params", "dense_params", "optimizer_steps", "train_seconds", "onnx",
                "wall_seconds", "macs_reduction"):  # the keys docs/benchmarks.md's tables read
        assert key in cell, key
    m = RunDir.open(runs / "tp").manifest
    assert m.method_name == "tp-groupnorm" and m.mode == "channel"
    assert [e["stage"] for e in m.metrics["epochs"]] and all(e["stage"] != "mask" for e in m.metrics["epochs"])
    assert cell["macs"] == m.metrics["structure"]["macs"]["compressed"] and cell["macs_reduction"] > 1.5
    assert 0 < cell["top1"] <= 1 and (runs / "tp" / "model.onnx").is_file()
