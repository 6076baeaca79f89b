"""bench/throughput.py on a tiny setting: every kind and precision runs the product's step and lands
in the JSON with its ratio to the fine-tune step (no timing is judged here)."""
from __future__ import annotations

import json

from bench.throughput import KINDS, main


def test_tiny_throughput_grid_writes_every_row(tmp_path):
    out = tmp_path / "tp.json"
    report = main(["--archs", "digits_cnn", "--size", "8", "--classes", "10", "--batch-size", "4", "--steps", "2",
                   "--warmup", "0", "--precisions", "off,bf16", "--device", "cpu", "--out", str(out)])
    (saved,) = json.loads(out.read_text())["runs"]  # one entry per world size
    assert saved["rows"] == report["rows"] and saved["world_size"] == 1
    assert [(r["precision"], r["kind"]) for r in saved["rows"]] == [(p, k) for p in ("off", "bf16") for k in KINDS]
    assert all(r["images_per_s"] > 0 and r["steps"] == 2 for r in saved["rows"])
    assert len(saved["ratios"]) == 2 * (len(KINDS) - 1)
    assert saved["command"].startswith("python -m bench.throughput --archs digits_cnn")
