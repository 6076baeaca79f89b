"""bench/data_pipeline.py on a tiny generated folder: throughput rows, the streamed compress epoch's
peak memory, the old design measured from git, JSON with the command."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

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


def test_epoch_time_interleaves_repeats_and_reports_the_median(tmp_path, monkeypatch):
    """--epoch-repeats: one untimed cache-filling run per design, then old, new, new, old, ... timed;
    train_seconds is each design's median run, every run kept (no real training: runs are faked)."""
    import bench.data_pipeline as dp

    calls, seconds = [], {"old": iter([101.0, 99.0, 103.0]), "new": iter([98.0, 97.0, 96.0])}

    def fake_run(cmd, cwd, env=None, interval=0.1):
        out = Path(cmd[cmd.index("--out") + 1])
        name = "new" if out.name == "epoch-new" else "old"
        calls.append(name)
        out.mkdir(parents=True, exist_ok=True)
        warm = calls.count(name) == 1
        secs = 0.0 if warm else next(seconds[name])
        (out / "manifest.json").write_text(json.dumps({
            "metrics": {"epochs": [{"train_seconds": secs, "eval_seconds": 1.0, "images_seen": 10}]},
            "data": {"train_images": 10}}))
        return {"returncode": 0, "peak_pss_mib": 1.0, "main_maxrss_mib": 1.0, "seconds": 1.0, "minor_faults": 5,
                "user_s": 0.0, "sys_s": 0.0, "log_tail": ""}

    monkeypatch.setattr(dp, "peak_memory", fake_run)
    res = dp.epoch_time(tmp_path / "c.tar.gz", tmp_path / "m.th", tmp_path, tmp_path / "old", 256, repeats=3)
    assert calls == ["old", "new", "old", "new", "new", "old", "old", "new"]
    assert res["old"]["train_seconds_runs"] == [101.0, 99.0, 103.0] and res["old"]["train_seconds"] == 101.0
    assert res["new"]["train_seconds_runs"] == [98.0, 97.0, 96.0] and res["new"]["train_seconds"] == 97.0
    assert [r["attempt"] for r in res["new"]["runs"]] == ["timed 1", "timed 2", "timed 3"]
