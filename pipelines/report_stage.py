"""Stage `report`: measured accuracy, size and ONNX Runtime CPU latency, dense vs compressed."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calibration.accuracy import ort_top1
from calibration.feeds import nhwc_uint8
from calibration.latency import LATENCY_BATCHES, latency_by_batch, tile_batch
from calibration.session import cpu_session, cpu_threads
from export.onnx_export import export_onnx
from export.precision import precision_path
from export.tensorrt_engine import ort_gpu_providers
from pipelines.artifacts import DENSE_ONNX, DENSE_PT, MANIFEST, MODEL_ONNX, MODEL_PT, REPORT_JSON, REPORT_MD
from pipelines.load_run import load_run
from pipelines.manifest import Manifest
from pipelines.report_record import Report
from pipelines.report_render import render_markdown, render_table
from pipelines.run_dir import RunDir, now, versions
from vpns_deploy.atomic import atomic_write_json, atomic_write_text
from vpns_deploy.device import resolve_device
from vpns_deploy.errors import UserError
from vpns_deploy.evaluate import top1
from vpns_deploy.macs import count_macs
from vpns_deploy.progress import Reporter, out_console
from vpns_deploy.prompts import Normalize



def _counts(net: nn.Module) -> dict[str, int]:
    params = [p.detach() for p in net.parameters()]
    return {"params": sum(p.numel() for p in params), "nonzero": sum(int(torch.count_nonzero(p)) for p in params)}


def _gz_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def run_report(run_dir: Path, data_spec: str | None = None, reporter: Reporter | None = None,
               print_table: bool = True) -> dict:
    """Measure a run and write report.json/report.md; returns report.json's content."""
    reporter = reporter or Reporter()
    loaded = load_run(run_dir)
    run = loaded.run
    m = run.manifest
    if m.export is None:
        raise UserError(f"{run_dir} has not been exported yet", f"run: vpns-deploy export {run_dir}")
    model_onnx, dense_onnx = run.verified(MODEL_ONNX), run.verified(DENSE_ONNX)
    ships_prompt = m.export.ships_prompt
    test = loaded.test_split(data_spec)
    device = resolve_device("auto")
    threads = cpu_threads()

    sessions = {"dense": cpu_session(dense_onnx, threads), "compressed": cpu_session(model_onnx, threads)}
    reporter.line(f"measuring top-1 on {len(test)} test images (PyTorch on {device}, ONNX Runtime CPU)")
    accuracy = {
        "dense": {"pytorch": top1(loaded.dense_model().to(device), test, device, prompted=False),
                  "onnxruntime": ort_top1(sessions["dense"], test)},
        "compressed": {
            "pytorch_no_prompt": top1(loaded.prompted(False).to(device), test, device, prompted=False),
            "pytorch_prompt": (top1(loaded.prompted(True).to(device), test, device, prompted=True)
                               if loaded.prompt is not None else None),
            "onnxruntime": ort_top1(sessions["compressed"], test),
        },
    }
    accuracy["compressed"]["pytorch"] = accuracy["compressed"][
        "pytorch_prompt" if ships_prompt else "pytorch_no_prompt"
    ]

    reporter.line(f"measuring ONNX Runtime CPU latency ({threads} threads), batch {LATENCY_BATCHES}")
    sample = nhwc_uint8(test, 0, 64)
    latency = {kind: latency_by_batch(session, sample) for kind, session in sessions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        net_only = Path(tmp) / "network.onnx"
        with torch.no_grad():
            x01 = torch.from_numpy(sample[:2]).permute(0, 3, 1, 2).float() / 255
            if ships_prompt:
                x01 = loaded.prompt(x01)
            normalised = Normalize(loaded.inputs)(x01)
        export_onnx(loaded.compressed, normalised.contiguous(), net_only, input_name="x")
        net_sample = np.repeat(normalised[:1].numpy(), 64, axis=0)
        session = cpu_session(net_only, threads)
        latency["network_only"] = latency_by_batch(session, net_sample)
    overhead = {
        b: {"ms": latency["compressed"][b]["median_ms"] - latency["network_only"][b]["median_ms"],
            "fraction": 1 - latency["network_only"][b]["median_ms"] / latency["compressed"][b]["median_ms"]}
        for b in latency["compressed"]
    }
    precision = _precisions(run, test, sample, threads, reporter)
    tensorrt = _tensorrt(run, test, sample, reporter)
    counts = {"dense": _counts(loaded.dense), "compressed": _counts(loaded.compressed)}
    example = torch.zeros(1, *m.data.image_shape)
    for name, net in (("dense", loaded.dense), ("compressed", loaded.compressed)):
        counts[name]["macs"] = count_macs(net, example)
    macs_ratio = counts["dense"]["macs"] / max(1, counts["compressed"]["macs"])
    speed = {b: {"speedup": latency["dense"][b]["median_ms"] / latency["compressed"][b]["median_ms"]}
             for b in latency["dense"]}
    for b in speed:
        # 1.0: the latency falls exactly as much as the MACs do.
        speed[b]["efficiency"] = speed[b]["speedup"] / macs_ratio
    files = {
        name: {"bytes": run.file(name).stat().st_size, "gzip_bytes": _gz_bytes(run.file(name))}
        for name in (MODEL_ONNX, DENSE_ONNX, MODEL_PT, DENSE_PT)
    }
    report = Report(
        created=now(), run=str(Path(run_dir)), method=m.method_name, mode=m.mode, macs_reduction=macs_ratio,
        speedup=speed, sparsity_target=m.sparsity_target, sparsity_prunable=m.metrics["sparsity"],
        ships_prompt=ships_prompt, prompt_choice=m.export.prompt_choice,  # why: the validation decision or a flag
        head=_head_summary(m), caller_must_feed=m.export.caller_must_feed, test_images=len(test),
        accuracy=accuracy, counts=counts, files=files, latency_ms=latency, preprocessing_overhead=overhead,
        precision=precision, tensorrt=tensorrt,
        structure={k: v for k, v in m.metrics.get("structure", {}).items()
                   if k in ("mode", "pattern", "exempt", "speedup_target", "macs_reduction")},
        machine={"threads": threads, "provider": "CPUExecutionProvider", **versions()},
    )
    atomic_write_json(run.file(REPORT_JSON), report.to_dict())
    atomic_write_text(run.file(REPORT_MD), render_markdown(report))
    run.record(REPORT_JSON)
    run.record(REPORT_MD)
    run.save()
    if print_table:
        out_console.print(render_table(report))
    return report.to_dict()


def _precisions(run, test, sample: np.ndarray, threads: int, reporter: Reporter) -> dict:
    """fp16 / int8 graphs written by export: ONNX Runtime CPU top-1 and latency, dense and compressed."""
    out = {}
    for precision in [p for p in run.manifest.export.precisions if p != "fp32"]:
        reporter.line(f"measuring the {precision} graphs (top-1 on {len(test)} images, latency)")
        out[precision] = {}
        for kind, name in (("dense", DENSE_ONNX), ("compressed", MODEL_ONNX)):
            path = run.verified(precision_path(run.file(name), precision).name)
            session = cpu_session(path, threads)
            out[precision][kind] = {"onnxruntime": ort_top1(session, test), "latency_ms": latency_by_batch(session, sample)}
    return out


def _tensorrt(run, test, sample: np.ndarray, reporter: Reporter) -> dict:
    """Engine top-1 and latency (CUDA events) where export built engines and a GPU is here."""
    built = run.manifest.export.tensorrt or {}
    providers = ort_gpu_providers(run.file(MODEL_ONNX))
    if not built.get("built"):
        reason = built.get("reason") or "export ran without --trt"
        return {"measured": False, "reason": reason, "ort_providers": providers}
    from export.tensorrt_engine import EngineRunner, engine_top1

    engines = {}
    for precision, info in built["engines"].items():
        reporter.line(f"measuring TensorRT {precision} engine")
        runner = EngineRunner(run.verified(Path(info["path"]).name))
        engines[precision] = {"top1": engine_top1(runner, test),
                              "latency_ms": {str(b): runner.latency(tile_batch(sample, b))
                                             for b in LATENCY_BATCHES},
                              "sparse_layers": info["sparse_layers"]}
    return {"measured": True, "engines": engines, "ort_providers": providers}


def report_is_current(run_dir: Path) -> bool:
    """report.json exists, verifies, is of this schema, and was measured after the latest export."""
    if not (Path(run_dir) / MANIFEST).is_file():
        return False
    run = RunDir.open(run_dir)
    if run.manifest.export is None:
        return False
    try:
        report = Report.read(run.verified(REPORT_JSON))
    except UserError:
        return False
    return report.created >= run.manifest.export.created


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


