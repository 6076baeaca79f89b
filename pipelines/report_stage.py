"""Stage `report`: measured accuracy, size and ONNX Runtime CPU latency, dense vs compressed.

The measuring itself is report_measure.py over calibration/ (the one measurement layer); this
module assembles the Report, writes report.json/report.md and records the report stage's fingerprint
(stage_keys.report_record: the graphs it measured and its settings), which tells stages.py it is done.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import nn

from calibration.cpu import cpu_facts
from calibration.feeds import nhwc_uint8
from calibration.latency import DEFAULT_BUDGET_S, LATENCY_BATCHES, check_budget
from calibration.runtime import OrtRuntime
from calibration.session import cpu_session, cpu_threads
from pipelines import report_measure as measure
from export.precision import precision_path
from pipelines.artifacts import DENSE_ONNX, DENSE_PT, MODEL_ONNX, MODEL_PT, REPORT_JSON, REPORT_MD
from pipelines.load_run import load_run
from pipelines.manifest import Manifest
from pipelines.report_record import Report
from pipelines.report_render import render_markdown, render_table
from pipelines.run_dir import now, versions
from pipelines.stage_keys import report_record
from vpns_deploy.atomic import atomic_write_json, atomic_write_text
from vpns_deploy.device import resolve_device
from vpns_deploy.errors import UserError
from vpns_deploy.macs import count_macs
from vpns_deploy.progress import Reporter, out_console


def _counts(net: nn.Module) -> dict[str, int]:
    params = [p.detach() for p in net.parameters()]
    return {"params": sum(p.numel() for p in params), "nonzero": sum(int(torch.count_nonzero(p)) for p in params)}


def _gz_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def run_report(run_dir: Path, data_spec: str | None = None, reporter: Reporter | None = None,
               print_table: bool = True, latency_budget: float = DEFAULT_BUDGET_S) -> dict:
    """Measure a run and write report.json/report.md; returns report.json's content.
    `latency_budget`: seconds of timed calls per graph (over its batch sizes)."""
    check_budget(latency_budget)
    reporter = reporter or Reporter()
    loaded = load_run(run_dir)
    run, m = loaded.run, loaded.run.manifest
    if m.export is None:
        raise UserError(f"{run_dir} has not been exported yet", f"run: vpns-deploy export {run_dir}")
    ships_prompt = m.export.ships_prompt
    test = loaded.test_split(data_spec)
    device, threads = resolve_device("auto"), cpu_threads()
    graphs = {kind: OrtRuntime(cpu_session(run.verified(name), threads), kind)
              for kind, name in (("dense", DENSE_ONNX), ("compressed", MODEL_ONNX))}
    reporter.line(f"measuring top-1 on {len(test)} test images (PyTorch on {device}, ONNX Runtime CPU)")
    accuracy = measure.accuracy(loaded, graphs, test, device, ships_prompt)
    batches = measure.report_batches(m)
    reporter.line(f"measuring ONNX Runtime CPU latency ({threads} threads), batch {batches}, graphs "
                  f"interleaved, at most {latency_budget:g} s per graph")
    sample = nhwc_uint8(test, 0, max(batches))
    lower = measure.precision_graphs(run, threads)
    timings = measure.all_latency(loaded, {**graphs, **lower}, sample, ships_prompt, threads, latency_budget, reporter,
                                  batches)
    latency = {k: v for k, v in measure.as_json(timings).items() if k in ("dense", "compressed", "network_only")}
    overhead = {b: {"ms": latency["compressed"][b]["median_ms"] - latency["network_only"][b]["median_ms"],
                    "fraction": 1 - latency["network_only"][b]["median_ms"] / latency["compressed"][b]["median_ms"]}
                for b in latency["compressed"]}
    precision = measure.precisions(run, test, lower, timings, reporter)
    shipping = measure.shipping(timings, accuracy, precision, m.export.max_precision_drop)
    tensorrt = measure.tensorrt(run, test, sample, latency_budget, reporter)
    gpu = measure.gpu(loaded, sample, ships_prompt, device, latency_budget, reporter)
    counts = {"dense": _counts(loaded.dense), "compressed": _counts(loaded.compressed)}
    example = torch.zeros(1, *m.data.image_shape)
    for name, net in (("dense", loaded.dense), ("compressed", loaded.compressed)):
        counts[name]["macs"] = count_macs(net, example)
    macs_ratio = counts["dense"]["macs"] / max(1, counts["compressed"]["macs"])
    files = {name: {"bytes": run.file(name).stat().st_size, "gzip_bytes": _gz_bytes(run.file(name))}
             for name in (MODEL_ONNX, DENSE_ONNX, MODEL_PT, DENSE_PT,
                          *(precision_path(run.file(g), p).name for p in precision for g in (MODEL_ONNX, DENSE_ONNX)))}
    report = Report(
        created=now(), run=str(Path(run_dir)), method=m.method_name, mode=m.mode, macs_reduction=macs_ratio,
        speedup=measure.speedups(timings, macs_ratio), sparsity_target=m.sparsity_target,
        sparsity_prunable=m.metrics["sparsity"], ships_prompt=ships_prompt,
        prompt_choice=m.export.prompt_choice,  # why: the validation decision or a flag
        head=_head_summary(m), caller_must_feed=m.export.caller_must_feed, test_images=len(test),
        baseline=m.metrics.get("baseline"), dense_reference=m.metrics.get("dense_reference"),
        precision_gate={"max_drop": m.export.max_precision_drop, "left_out": m.export.left_out},
        shipping=shipping, target=measure.target(m, shipping),
        slowest_layers=measure.slowest_layers(run, sample, threads),
        accuracy=accuracy, counts=counts, files=files, latency_ms=latency, preprocessing_overhead=overhead,
        precision=precision, tensorrt=tensorrt, gpu=gpu, cpu=_cpu(precision, latency, m.export.int8_format),
        structure={k: v for k, v in m.metrics.get("structure", {}).items()
                   if k in ("mode", "pattern", "exempt", "speedup_target", "macs_reduction")},
        machine={"threads": threads, "provider": "CPUExecutionProvider", "latency_budget_s": latency_budget,
                 **versions()},
    )
    atomic_write_json(run.file(REPORT_JSON), report.to_dict())
    atomic_write_text(run.file(REPORT_MD), render_markdown(report))
    run.record(REPORT_JSON)
    run.record(REPORT_MD)
    run.manifest.stages["report"] = report_record(m, latency_budget, data_spec, [REPORT_JSON, REPORT_MD])
    run.save()
    if print_table:
        out_console.print(render_table(report))
    return report.to_dict()


def _cpu(precision: dict, latency: dict, int8_format: dict | None) -> dict:
    """The CPU's instruction sets and what they mean for int8, with this report's int8 numbers and the
    int8 format export measured and shipped (export/int8_format.py)."""
    facts = cpu_facts()
    measured = ""
    if "int8" in precision:
        b = str(LATENCY_BATCHES[-1])
        int8, fp32 = precision["int8"]["compressed"]["latency_ms"][b], latency["compressed"][b]
        measured = f"compressed graph at batch {b}, int8 {int8['median_ms']:.2f} ms vs fp32 {fp32['median_ms']:.2f} ms"
    shipped = {"int8_format": {k: int8_format[k] for k in ("format", "reason")}} if int8_format else {}
    return facts.to_dict() | {"int8_note": facts.int8_note(measured)} | shipped


def _head_summary(manifest: Manifest) -> dict | None:
    """--head map/new: what the report shows of the head (the label map, target -> source)."""
    method = manifest.method
    head, mapping = method.get("head"), method.get("label_mapping")
    if not isinstance(head, dict) or head.get("kind") == "keep":
        return None
    out = {"kind": head["kind"], "layer": head.get("layer")}
    if isinstance(mapping, dict):
        out["map"] = [f"{m['target_name']} -> {m['source']}" + (f" ({m['source_name']})" if m.get("source_name") else "")
                      for m in mapping.get("map", [])]
    if head.get("warmup"):
        out["warmup_steps"] = head["warmup"]["optimizer_steps"]
    return out


