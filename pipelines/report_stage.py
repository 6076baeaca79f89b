"""Stage `report`: measured accuracy, size and ONNX Runtime CPU latency, dense vs compressed."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from rich.table import Table
from torch import nn

from calibration.accuracy import ort_top1
from calibration.feeds import nhwc_uint8
from calibration.latency import LATENCY_BATCHES, latency_by_batch, tile_batch
from calibration.session import cpu_session, cpu_threads
from export.onnx_export import export_onnx
from export.precision import precision_path
from export.tensorrt_engine import ort_gpu_providers
from pipelines.export_stage import DENSE_ONNX, MODEL_ONNX
from pipelines.load_run import load_run
from pipelines.run_dir import now, versions
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
    reporter = reporter or Reporter()
    loaded = load_run(run_dir)
    run = loaded.run
    if "export" not in run.manifest:
        raise UserError(f"{run_dir} has not been exported yet", f"run: vpns-deploy export {run_dir}")
    model_onnx, dense_onnx = run.verified(MODEL_ONNX), run.verified(DENSE_ONNX)
    ships_prompt = bool(run.manifest["export"]["ships_prompt"])
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
    example = torch.zeros(1, *run.manifest["data"]["image_shape"])
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
        for name in (MODEL_ONNX, DENSE_ONNX, "model.pt", "dense.pt")
    }
    report = {
        "created": now(),
        "run": str(Path(run_dir)),
        "method": run.manifest["config"]["method"],
        "mode": run.manifest["config"].get("mode", "unstructured"),
        "macs_reduction": macs_ratio,
        "speedup": speed,
        "sparsity_target": run.manifest["config"]["sparsity"],
        "sparsity_prunable": run.manifest["metrics"]["sparsity"],
        "ships_prompt": ships_prompt,
        "prompt_choice": run.manifest["export"].get("prompt_choice"),  # why: the validation decision or a flag
        "head": _head_summary(run.manifest),
        "caller_must_feed": run.manifest["export"].get("caller_must_feed"),
        "test_images": len(test),
        "accuracy": accuracy,
        "counts": counts,
        "files": files,
        "latency_ms": latency,
        "preprocessing_overhead": overhead,
        "precision": precision,
        "tensorrt": tensorrt,
        "structure": {k: v for k, v in run.manifest["metrics"].get("structure", {}).items()
                      if k in ("mode", "pattern", "exempt", "speedup_target", "macs_reduction")},
        "machine": {"threads": threads, "provider": "CPUExecutionProvider", **versions()},
    }
    atomic_write_json(run.file("report.json"), report)
    atomic_write_text(run.file("report.md"), render_markdown(report))
    run.record("report.json")
    run.record("report.md")
    run.save()
    if print_table:
        out_console.print(render_table(report))
    return report


def _precisions(run, test, sample: np.ndarray, threads: int, reporter: Reporter) -> dict:
    """fp16 / int8 graphs written by export: ONNX Runtime CPU top-1 and latency, dense and compressed."""
    out = {}
    for precision in [p for p in run.manifest["export"].get("precisions", ["fp32"]) if p != "fp32"]:
        reporter.line(f"measuring the {precision} graphs (top-1 on {len(test)} images, latency)")
        out[precision] = {}
        for kind, name in (("dense", DENSE_ONNX), ("compressed", MODEL_ONNX)):
            path = run.verified(precision_path(run.file(name), precision).name)
            session = cpu_session(path, threads)
            out[precision][kind] = {"onnxruntime": ort_top1(session, test), "latency_ms": latency_by_batch(session, sample)}
    return out


def _tensorrt(run, test, sample: np.ndarray, reporter: Reporter) -> dict:
    """Engine top-1 and latency (CUDA events) where export built engines and a GPU is here."""
    built = (run.manifest["export"].get("tensorrt") or {})
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


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


def report_is_current(run_dir: Path) -> bool:
    """report.json exists, verifies, and was measured after the latest export."""
    import json

    from pipelines.run_dir import MANIFEST, RunDir

    if not (Path(run_dir) / MANIFEST).is_file():
        return False
    run = RunDir.open(run_dir)
    if "export" not in run.manifest:
        return False
    try:
        report = json.loads(run.verified("report.json").read_text())
    except UserError:
        return False
    return report["created"] >= run.manifest["export"]["created"]


def _head_summary(manifest: dict) -> dict | None:
    """--head map/new: what the report shows of the head (the label map, target -> source)."""
    method = manifest.get("method", {})
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


def _prompt_rows(r: dict) -> list[tuple[str, str, str]]:
    choice = r.get("prompt_choice") or {}
    decision = choice.get("decision") or {}
    if not choice or decision.get("rule") == "the run learned no prompt":
        return []
    numbers = "—"
    if decision.get("val_top1_plain") is not None and decision.get("val_top1_prompted") is not None:
        numbers = f"{_pct(decision['val_top1_prompted'])} / {_pct(decision['val_top1_plain'])}"
    return [("prompt in the graph (validation top-1 with / without)", "",
             f"{'folded in' if choice.get('fold') else 'left out'}: {numbers}")]


def table_rows(r: dict) -> list[tuple[str, str, str]]:
    a, c, f, lat = r["accuracy"], r["counts"], r["files"], r["latency_ms"]
    rows = [
        ("top-1, PyTorch", _pct(a["dense"]["pytorch"]), _pct(a["compressed"]["pytorch"])),
        ("top-1, ONNX Runtime", _pct(a["dense"]["onnxruntime"]), _pct(a["compressed"]["onnxruntime"])),
        ("top-1 without prompt (PyTorch)", _pct(a["dense"]["pytorch"]), _pct(a["compressed"]["pytorch_no_prompt"])),
        ("top-1 with prompt (PyTorch)", "—", _pct(a["compressed"]["pytorch_prompt"])),
        ("parameters", f"{c['dense']['params']:,}", f"{c['compressed']['params']:,}"),
        ("non-zero parameters", f"{c['dense']['nonzero']:,}", f"{c['compressed']['nonzero']:,}"),
        ("MACs per image (conv + linear)", f"{c['dense']['macs'] / 1e6:.2f} M",
         f"{c['compressed']['macs'] / 1e6:.2f} M ({r['macs_reduction']:.2f}x fewer)"),
        ("ONNX file (gzip)", f"{f[DENSE_ONNX]['bytes'] / 1e6:.2f} MB ({f[DENSE_ONNX]['gzip_bytes'] / 1e6:.2f})",
         f"{f[MODEL_ONNX]['bytes'] / 1e6:.2f} MB ({f[MODEL_ONNX]['gzip_bytes'] / 1e6:.2f})"),
    ]
    for b in lat["dense"]:
        d, m = lat["dense"][b], lat["compressed"][b]
        rows.append((f"ORT CPU latency, batch {b} (median / p90)",
                     f"{d['median_ms']:.2f} / {d['p90_ms']:.2f} ms", f"{m['median_ms']:.2f} / {m['p90_ms']:.2f} ms"))
    for precision, kinds in r.get("precision", {}).items():
        d, m = kinds["dense"], kinds["compressed"]
        rows.append((f"top-1, ONNX Runtime {precision}", _pct(d["onnxruntime"]), _pct(m["onnxruntime"])))
        for b in d["latency_ms"]:
            dl, ml = d["latency_ms"][b], m["latency_ms"][b]
            rows.append((f"ORT CPU latency {precision}, batch {b} (median / p90)",
                         f"{dl['median_ms']:.2f} / {dl['p90_ms']:.2f} ms", f"{ml['median_ms']:.2f} / {ml['p90_ms']:.2f} ms"))
    trt_info = r.get("tensorrt") or {}
    if trt_info.get("measured"):
        for precision, e in trt_info["engines"].items():
            rows.append((f"TensorRT {precision} top-1", "", _pct(e["top1"])))
            for b, lat in e["latency_ms"].items():
                rows.append((f"TensorRT {precision} latency, batch {b} (median / p90)", "",
                             f"{lat['median_ms']:.3f} / {lat['p90_ms']:.3f} ms"))
    elif trt_info:
        rows.append(("TensorRT", "not measured", trt_info["reason"]))
    for b, sp in r["speedup"].items():
        rows.append((f"latency speedup, batch {b} (efficiency = speedup / MACs ratio)", "",
                     f"{sp['speedup']:.2f}x ({sp['efficiency']:.2f})"))
    for b, o in r["preprocessing_overhead"].items():
        rows.append((f"folded preprocessing, batch {b}", "", f"{o['ms']:+.3f} ms ({o['fraction']:+.1%})"))
    rows += _prompt_rows(r)
    return rows


def _title(r: dict) -> str:
    return (f"{r['method']} {r['mode']} at {r['sparsity_prunable']:.1%} sparsity — ships "
            f"{'with' if r['ships_prompt'] else 'without'} the prompt; {r['test_images']} test images")


def render_table(r: dict) -> Table:
    table = Table(title=_title(r))
    table.add_column("measure")
    table.add_column("dense", justify="right")
    table.add_column("compressed", justify="right")
    for row in table_rows(r):
        table.add_row(*(escape(c) for c in row))
    return table


def render_markdown(r: dict) -> str:
    lines = [f"# vpns-deploy report: {r['run']}", "", _title(r) + ".", "",
             "| measure | dense | compressed |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in table_rows(r)]
    structure = r.get("structure") or {}
    if structure.get("pattern"):
        n, mm = structure["pattern"]
        exempt = ", ".join(f"{e['name']} ({e['reason']})" for e in structure.get("exempt", [])) or "none"
        lines += ["", f"{n}:{mm} layers: every prunable layer except these, which stay dense: {exempt}.",
                  f"{n}:{mm} zeros make nothing faster in ONNX Runtime on a CPU (measured above); the speed-up "
                  "belongs to sparse tensor cores (TensorRT with SPARSE_WEIGHTS on Ampere or newer GPUs)."]
    choice = r.get("prompt_choice") or {}
    if choice:
        lines += ["", f"Prompt: {'folded into' if choice.get('fold') else 'left out of'} model.onnx ({choice.get('by')})."]
    head = r.get("head") or {}
    if head.get("map"):
        lines += ["", f"Head: the source head is kept; frequency label map (data class -> source class): "
                  + "; ".join(head["map"]) + "."]
    elif head.get("kind") == "new":
        lines += ["", f"Head: a new {head.get('layer')} for the data's classes, warmed up for "
                  f"{head.get('warmup_steps')} optimiser steps before stage 1."]
    feed = r.get("caller_must_feed")
    if feed:
        lines += ["", f"model.onnx takes {feed['dtype']} {feed['layout']} {feed['shape']}, {feed['channel_order']}, "
                  f"{feed['value_range']}; resize: {feed['resize']}."]
    m = r["machine"]
    lines += ["", f"Measured {r['created']} with ONNX Runtime {m.get('onnxruntime-gpu') or m.get('onnxruntime')} "
              f"({m['provider']}, {m['threads']} threads), torch {m.get('torch')}, on {m['platform']}.",
              "Latency: 5 warm-up runs, then median and p90 of at least 20 timed runs. The preprocessing "
              "overhead is the shipped graph minus the same network fed pre-normalised float input.", ""]
    return "\n".join(lines)
