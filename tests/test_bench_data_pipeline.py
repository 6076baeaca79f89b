"""bench/data_pipeline.py on a tiny generated folder: throughput rows, the streamed compress epoch's
peak memory, the old design measured from git, JSON with the command."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench.data_pipeline import ROOT, main


def test_tiny_data_pipeline_bench_writes_json(tmp_path):
    out = tmp_path / "data_pipeline.json"
    argv = ["--images", "40", "--side", "48", "--sizes", "16,80", "--workers", "0,1", "--throughput-images", "20",
            "--batch-size", "10", "--rss-size", "16", "--work", str(tmp_path / "work"), "--out", str(out)]
    main(argv)
    saved = json.loads(out.read_text())
    assert saved["command"].endswith(" ".join(argv)) and "bench.data_pipeline" in saved["command"]
    rows = saved["throughput"]
    assert [(r["size"], r["workers"]) for r in rows] == [(16, 0), (16, 1), (80, 0), (80, 1)]
    assert all(r["images"] == 20 and r["images_per_s"] > 0 for r in rows)
    assert rows[2]["augment"]["crop_size"] == 80 and rows[0]["augment"]["crop_pad"] == 2
    new = saved["rss"]["new_stream"]
    assert new["returncode"] == 0, new["log_tail"]
    assert "streamed" in new["log_tail"] and new["peak_pss_mib"] > 10
    assert saved["rss"]["old_tensor_bytes"] == (40 + 10) * 3 * 48 * 48
    has_git = shutil.which("git") and subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode == 0
    if not has_git:
        pytest.skip("no git checkout here: the old design's loader is not measured")
    old = saved["rss"]["old_loader"]
    assert old["returncode"] == 0 and "(40, 3, 48, 48)" in old["log_tail"], old["log_tail"]
