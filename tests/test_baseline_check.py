"""Every run measures the simplest baseline (magnitude mask + BN re-estimation, no training) and says
where the shipped model stands against it: in the manifest, the summary line and the report."""
from __future__ import annotations

import copy

import torch

from pipelines.compress_record import baseline_text
from pipelines.run_dir import RunDir


def test_the_run_records_the_baseline_and_the_shipped_model_against_it(digits_run):
    m = RunDir.open(digits_run).manifest
    b, metrics = m.metrics["baseline"], m.metrics
    shipped = metrics["top1_prompted"] if metrics["prompt_decision"]["fold"] else metrics["top1_plain"]
    assert b["shipped_test_top1"] == shipped
    assert b["below"] == (shipped < b["test_top1"])
    assert 0.0 < b["test_top1"] <= 1.0 and b["val_top1"] is not None
    assert b["bn_images"] > 0 and "no training" in b["name"]
    assert m.method["distill"] is False  # VPNs does not distil by default (CompressConfig.distill)


def test_the_baseline_measures_a_copy_at_the_run_sparsity(digits_model, digits_splits):
    """The dense network handed in is left as it was; the baseline's copy is masked to the target, and
    re-estimating BN statistics changes its top-1 (the numbers come from the masked copy, not the dense)."""
    from dataclasses import replace

    from vpns_deploy.baseline_check import measure_baseline
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.evaluate import top1
    from vpns_deploy.models import load_model
    from vpns_deploy.prompts import PromptedNet

    loaded = load_model(digits_model, "digits_cnn", digits_splits.num_classes)
    dense = loaded.net.eval()
    before = copy.deepcopy(dense.state_dict())
    cfg = CompressConfig(sparsity=0.9, batch_size=64)
    dense_top1 = top1(PromptedNet(dense, loaded.inputs, None, None), digits_splits.test, torch.device("cpu"), False)
    b = measure_baseline(dense, loaded, None, digits_splits, cfg, torch.device("cpu"))
    no_bn = measure_baseline(dense, loaded, None, digits_splits, replace(cfg, bn_images=0), torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert b.bn_images == min(cfg.bn_images, len(digits_splits.train)) and no_bn.bn_images == 0
    assert b.test_top1 < dense_top1 and b.test_top1 != no_bn.test_top1


def test_below_the_baseline_is_a_warning_in_the_summary_and_the_report():
    from pipelines.report_render import render_markdown
    from pipelines.report_record import Report

    below = {"name": "magnitude mask", "test_top1": 0.6, "val_top1": None, "bn_images": 100, "seconds": 1.0,
             "shipped_test_top1": 0.5, "below": True}
    assert baseline_text(below).startswith("warning: shipped model 50.00% vs 60.00%")
    assert not baseline_text({**below, "shipped_test_top1": 0.7, "below": False}).startswith("warning")
    report = Report(created="now", run="r", method="vpns", mode="unstructured", test_images=10, sparsity_target=0.9,
                    sparsity_prunable=0.9, macs_reduction=1.0, ships_prompt=False,
                    accuracy={"dense": {"pytorch": 0.9, "onnxruntime": 0.9},
                              "compressed": {"pytorch": 0.5, "onnxruntime": 0.5, "pytorch_no_prompt": 0.5,
                                             "pytorch_prompt": None}},
                    counts={k: {"params": 1, "nonzero": 1, "macs": 1e6} for k in ("dense", "compressed")},
                    files={n: {"bytes": 1, "gzip_bytes": 1} for n in ("dense.onnx", "model.onnx")},
                    latency_ms={"dense": {}, "compressed": {}}, speedup={}, preprocessing_overhead={},
                    machine={"threads": 2, "provider": "CPU", "platform": "linux"}, baseline=below)
    text = render_markdown(report)
    assert "**Warning:**" in text and "(below the baseline)" in text
    assert "**Warning:**" not in render_markdown(Report(**{**report.to_dict(), "baseline": None}))
