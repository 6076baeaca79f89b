"""bench/gpu_check.sh: its dry run, for real, on the CPU (so the GPU check cannot rot between the rare
GPU calls), its step time limit, the data subset it is fed, and the CUDA paths it checks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), str(out), "--dry-run"], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out


def test_dry_run_records_every_step(dry_run):
    from bench.gpu_check import LIMITS

    doc, out = dry_run
    assert doc["schema"] == 1 and doc["dry_run"] is True
    assert list(doc["steps"]) == list(LIMITS)  # every step, in order
    for name, record in doc["steps"].items():
        assert record["status"] in ("ok", "failed", "skipped") and record["seconds"] >= 0, name
        assert record["seconds"] <= record["limit_s"] + 5, name
    statuses = {n: r["status"] for n, r in doc["steps"].items()}
    failed = {n: r["error"] for n, r in doc["steps"].items() if r["status"] == "failed"}
    assert not failed
    skipped = {"gpu_latency_compile", "export_off", "report_off"}
    assert {n for n, st in statuses.items() if st == "skipped"} == skipped
    assert all(doc["steps"][n]["reason"].startswith("dry run:") for n in skipped)
    assert "torch.compile" in doc["steps"]["gpu_latency_compile"]["reason"]
    assert doc["summary"] == {"ok": len(LIMITS) - len(skipped), "failed": 0, "skipped": len(skipped)}
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name} " in log for name in LIMITS)
    assert (out / "report_bf16.md").is_file()


def test_dry_run_measures_what_the_gpu_run_reports(dry_run):
    doc, _ = dry_run
    r = {n: s["result"] for n, s in doc["steps"].items()}
    counts = r["pytest_gpu"]["counts"]
    assert counts["tests"] >= 3 and counts["skipped"] == counts["tests"]  # no CUDA here: every gpu test skips
    for amp in ("bf16", "off"):
        assert r[f"compress_{amp}"]["precision"]["amp"] == amp
        assert {"mask", "tune"} <= set(r[f"compress_{amp}"]["stages_last_epoch"])
        assert all(v["images_per_s"] > 0 for v in r[f"compress_{amp}"]["stages_last_epoch"].values())
    assert r["export_bf16"]["parity_passed"] and "model.onnx" in r["export_bf16"]["parity"]
    assert r["report_bf16"]["gpu"] == {"measured": False, "reason": "no CUDA GPU visible"}
    for precision in ("bf16", "off"):
        assert r["step_time"]["ratios"][precision]["vpns_stage1_over_dense"] > 0
    assert r["step_time"]["ratios"]["bf16"]["target"] == 1.25
    assert r["gpu_latency"]["clock"] == "wall clock"
    assert set(r["gpu_latency"]["latency_ms"]) == {"dense", "compressed"}
    sparse = r["sparse24"]
    assert "no sparse convolution" in sparse["note"] and "CUDA" in sparse["sparse_skipped"]
    assert sparse["layers_1x1"] == 36 and sparse["batches"]["1"]["network_dense_ms"] > 0
    smoke = r["torchrun"]["process_group_smoke"]
    assert smoke["backend"] == "gloo" and smoke["ddp"] == "DistributedDataParallel" and smoke["broadcast_state_equal"]
    assert r["resume"]["killed_at"]["stage"] == "mask" and r["resume"]["resumed_message"]
    assert all(r["resume"]["bit_identical"].values())  # on the CPU the resumed run is bit-identical
    assert r["resume"]["top1_plain"][0] == r["resume"]["top1_plain"][1] and r["resume"]["checkpoint_removed"]


def test_a_step_past_its_limit_is_killed_and_recorded(tmp_path, monkeypatch):
    from bench import gpu_check, gpu_check_steps

    monkeypatch.setitem(gpu_check_steps.STEPS, "hang", lambda s: time.sleep(60))
    s = gpu_check_steps.Settings(tmp_path, tmp_path / "work", True, None, None)
    (s.work / "steps").mkdir(parents=True)
    t0 = time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        record = gpu_check._child(s, "hang", 1.0, log)
    assert time.perf_counter() - t0 < 10
    assert record["status"] == "failed" and "timed out after 1 s" in record["error"]


def test_a_step_that_raises_is_a_failed_record_with_the_error(tmp_path, monkeypatch):
    from bench import gpu_check, gpu_check_steps

    monkeypatch.setitem(gpu_check_steps.STEPS, "boom", lambda s: 1 / 0)
    s = gpu_check_steps.Settings(tmp_path, tmp_path / "work", True, None, None)
    (s.work / "steps").mkdir(parents=True)
    with open(tmp_path / "log", "w") as log:
        record = gpu_check._child(s, "boom", 30, log)
    assert record["status"] == "failed" and record["error"].startswith("ZeroDivisionError")
    assert "Traceback" in (tmp_path / "log").read_text()


def test_gpu_run_without_data_or_gpu_is_one_line(tmp_path):
    done = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2 and done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.shared
def test_subset_is_a_balanced_image_folder_copied_from_the_archive(tmp_path, cifar_tar):
    from bench.gpu_subset import make_subset
    from vpns_deploy.data import read_catalog
    from vpns_deploy.errors import UserError

    out = tmp_path / "sub"
    assert make_subset(cifar_tar, out, {"train": 3, "test": 2}) == {"train": 30, "test": 20}
    catalog = read_catalog(f"imagefolder:{out}")
    assert catalog.num_classes == 10
    assert sorted(p.parent.name for p in (out / "test").glob("*/*.jpg")).count("cat") == 2
    with pytest.raises(UserError, match="already exists"):
        make_subset(cifar_tar, out, {"train": 3, "test": 2})


def test_sparse24_prunes_two_of_every_four():
    from bench.gpu_sparse24 import prune_2of4

    w = torch.randn(16, 64)
    p = prune_2of4(w)
    groups = p.reshape(16, -1, 4)
    assert ((groups != 0).sum(-1) == 2).all()
    kept = w.reshape(16, -1, 4).abs().topk(2, dim=-1).values.sum()
    assert torch.isclose(groups.abs().sum(), kept)


@pytest.mark.gpu
def test_torch_runtime_on_cuda_times_with_events_and_compiles(digits_run):
    from calibration.feeds import nhwc_uint8
    from calibration.runtime import TorchRuntime
    from pipelines.load_run import load_run

    loaded = load_run(digits_run)
    batch = nhwc_uint8(loaded.test_split(), 0, 8)
    cpu = TorchRuntime(loaded.prompted(False), torch.device("cpu"), False).infer(batch)
    for compiled in (False, True):
        rt = TorchRuntime(load_run(digits_run).prompted(False), torch.device("cuda"), False, compiled=compiled)
        got = rt.infer(batch)  # cuDNN convolutions run in TF32 by default: close, not equal
        np.testing.assert_allclose(got, cpu, rtol=0, atol=0.02 * float(np.abs(cpu).max()))
        once = rt.timer(batch)
        assert all(0 < once() < 1000 for _ in range(3))


@pytest.mark.gpu
def test_report_on_cuda_has_a_gpu_row_and_keeps_the_networks_on_the_cpu(tmp_path, digits_run):
    """report moves no run network to the GPU for good: the network-only graph and MACs run on the CPU after."""
    from pipelines.report_stage import run_report
    from vpns_deploy.progress import Reporter

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    report = run_report(run, reporter=Reporter(quiet=True), print_table=False, latency_budget=1.0)
    assert report["gpu"]["measured"] and report["gpu"]["device"] == torch.cuda.get_device_name(0)
    assert report["gpu"]["latency_ms"]["compressed"]["64"]["median_ms"] > 0
    assert "PyTorch CUDA latency, batch 64" in (run / "report.md").read_text()


def test_device_call_fits_the_device_tool_and_carries_only_ignored_folders():
    from bench.gpu_check import DEVICE_CALL, GPU_BUDGET_S

    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device-call"], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    call = json.loads(done.stdout)
    assert call == DEVICE_CALL and len(call["command"]) <= 2000 and GPU_BUDGET_S + 30 <= call["timeout_s"] <= 600
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for path in call["carry"]:  # carried folders must be ignored, or they would travel (and be committed) anyway
        assert f"/{path}/" in ignored, path
