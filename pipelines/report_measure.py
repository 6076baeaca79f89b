"""What `report` measures, through the one measurement layer (calibration/): top-1 of every runtime,
latency of every graph (interleaved where graphs are compared, bounded by the latency budget, with
progress), speedups with their interval, and TensorRT engines where export built them."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from calibration.latency import LATENCY_BATCHES, MAX_RUNS, Latency, latency_by_batch, speedup
from calibration.layer_profile import PROFILE_CALLS
from calibration.runtime import OrtRuntime, Runtime, TorchRuntime, top1
from calibration.session import cpu_session
from export.onnx_export import export_onnx
from export.precision import precision_path
from export.tensorrt_engine import ort_gpu_providers
from pipelines.artifacts import DENSE_ONNX, MODEL_ONNX
from pipelines.load_run import LoadedRun
from vpns_deploy.config import DEFAULT_MAX_PRECISION_DROP
from vpns_deploy.latency_budget import TOLERANCE
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import Normalize

Timings = dict[str, dict[str, Latency]]  # graph -> batch -> Latency


def on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` for a runtime on `device`: a copy where that is not the CPU, since a runtime moves its
    model and the run's networks must stay on the CPU for what follows (the network-only graph's
    export, MACs, the CPU inputs they are fed)."""
    return model if device.type == "cpu" else copy.deepcopy(model)


def accuracy(loaded: LoadedRun, graphs: dict[str, Runtime], test, device: torch.device, ships_prompt: bool) -> dict:
    """Top-1 of the PyTorch models (with and without the prompt) and of the shipped graphs."""
    def torch_top1(model, prompted: bool) -> float:
        return top1(TorchRuntime(on_device(model, device), device, prompted), test)

    out = {
        "dense": {"pytorch": torch_top1(loaded.dense_model(), False), "onnxruntime": top1(graphs["dense"], test)},
        "compressed": {
            "pytorch_no_prompt": torch_top1(loaded.prompted(False), False),
            "pytorch_prompt": torch_top1(loaded.prompted(True), True) if loaded.prompt is not None else None,
            "onnxruntime": top1(graphs["compressed"], test),
        },
    }
    out["compressed"]["pytorch"] = out["compressed"]["pytorch_prompt" if ships_prompt else "pytorch_no_prompt"]
    return out


def report_batches(manifest) -> tuple[int, ...]:
    """The batch sizes a report times: LATENCY_BATCHES, plus the batch compress's --speedup was set at."""
    target = (manifest.metrics or {}).get("target") or {}
    extra = {target["batch"]} if target.get("speedup") and target.get("batch") else set()
    return tuple(sorted(set(LATENCY_BATCHES) | extra))


def timed(what: str, runtimes: dict[str, Runtime], sample: np.ndarray, budget_s: float, reporter: Reporter,
          samples: dict[str, np.ndarray] | None = None, batches: tuple[int, ...] = LATENCY_BATCHES) -> Timings:
    """latency_by_batch with a progress bar and one line per batch size saying what was measured."""
    with reporter, reporter.task(f"latency {what}", total=MAX_RUNS * len(batches)) as bar:
        timings = latency_by_batch(runtimes, sample, budget_s, batches, tick=bar.advance, samples=samples)
    for b in (str(b) for b in batches):
        parts = [f"{name} {t[b].median_ms:.3f} ms [{t[b].ci95_ms[0]:.3f}, {t[b].ci95_ms[1]:.3f}]"
                 for name, t in timings.items()]
        first = next(iter(timings.values()))[b]
        reporter.line(f"latency {what}, batch {b} (median [95 % interval]): {', '.join(parts)}; "
                      f"{first.runs} timed calls each in {first.seconds:.1f} s per graph"
                      + (" (stopped by --latency-budget)" if first.budget_stopped else ""))
    return timings


def as_json(timings: Timings) -> dict:
    return {name: {b: lat.to_dict() for b, lat in by_batch.items()} for name, by_batch in timings.items()}


def network_only(loaded: LoadedRun, sample: np.ndarray, ships_prompt: bool, tmp: Path, threads: int
                 ) -> tuple[Runtime, np.ndarray]:
    """The compressed network alone, fed pre-prompted, pre-normalised float input: the shipped graph's
    latency minus this one is what the folded preprocessing costs."""
    with torch.no_grad():
        x01 = torch.from_numpy(sample[:2]).permute(0, 3, 1, 2).float() / 255
        if ships_prompt:
            x01 = loaded.prompt(x01)
        normalised = Normalize(loaded.inputs)(x01)
    path = tmp / "network.onnx"
    export_onnx(loaded.compressed, normalised.contiguous(), path, input_name="x")
    return OrtRuntime(cpu_session(path, threads), "network_only"), np.repeat(normalised[:1].numpy(), len(sample), axis=0)


def precision_graphs(run, threads: int) -> dict[str, Runtime]:
    """The fp16 / int8 graphs export shipped, dense and compressed, named "<kind> <precision>"."""
    return {f"{kind} {precision}": OrtRuntime(cpu_session(
                run.verified(precision_path(run.file(name), precision).name), threads), f"{kind} {precision}")
            for precision in run.manifest.export.precisions if precision != "fp32"
            for kind, name in (("dense", DENSE_ONNX), ("compressed", MODEL_ONNX))}


def all_latency(loaded: LoadedRun, graphs: dict[str, Runtime], sample: np.ndarray, ships_prompt: bool,
                threads: int, budget_s: float, reporter: Reporter, batches: tuple[int, ...] = LATENCY_BATCHES
                ) -> Timings:
    """Every graph in `graphs` (the run's fp32 pair and precision_graphs) and the network-only graph,
    timed in ONE interleaved measurement: every ratio against the dense fp32 graph, the one the user had,
    comes from the same minutes on the same machine."""
    with tempfile.TemporaryDirectory() as tmp:
        net, net_sample = network_only(loaded, sample, ships_prompt, Path(tmp), threads)
        return timed("every graph", {**graphs, "network_only": net}, sample, budget_s, reporter,
                     samples={"network_only": net_sample}, batches=batches)


def speedups(timings: Timings, macs_ratio: float) -> dict:
    """Per batch: dense / compressed median latency, its 95 % interval, within_noise, efficiency."""
    out = {}
    for b in timings["dense"]:
        s = speedup(timings["dense"][b], timings["compressed"][b])
        out[b] = s.to_dict() | {"efficiency": s.speedup / macs_ratio}  # 1.0: latency falls as much as MACs
    return out


def precisions(run, test, graphs: dict[str, Runtime], timings: Timings, reporter: Reporter) -> dict:
    """fp16 / int8 graphs written by export (precision_graphs): top-1, and their latency from the one
    interleaved measurement."""
    out = {}
    for precision in [p for p in run.manifest.export.precisions if p != "fp32"]:
        reporter.line(f"measuring the {precision} graphs (top-1 on {len(test)} images)")
        names = {kind: f"{kind} {precision}" for kind in ("dense", "compressed")}
        out[precision] = {kind: {"onnxruntime": top1(graphs[name], test), "latency_ms": as_json(timings)[name]}
                          for kind, name in names.items()}
        out[precision]["speedup"] = {b: speedup(timings[names["dense"]][b], timings[names["compressed"]][b]).to_dict()
                                     for b in timings[names["dense"]]}
    return out


def shipping(timings: Timings, accuracy: dict, precision: dict, max_drop: float | None) -> dict:
    """What to ship, decided by measurement: per batch, the fastest compressed graph (any shipped precision)
    whose test top-1 is within `max_drop` points of the compressed fp32 graph, and its speedup over the dense
    fp32 graph (what the user had), both from the one interleaved measurement."""
    fp32_top1 = accuracy["compressed"]["onnxruntime"]
    tops = {"compressed": fp32_top1, **{f"compressed {p}": v["compressed"]["onnxruntime"] for p, v in precision.items()}}
    limit = max_drop if max_drop is not None else DEFAULT_MAX_PRECISION_DROP
    candidates = {}
    for name, top in tops.items():
        within = 100 * (fp32_top1 - top) <= limit
        candidates[name] = {"top1": top, "within_tolerance": within,
                            "speedup_vs_dense_fp32": {b: speedup(timings["dense"][b], timings[name][b]).to_dict()
                                                      for b in timings["dense"]}}
    best = {b: max((n for n, c in candidates.items() if c["within_tolerance"]),
                   key=lambda n: candidates[n]["speedup_vs_dense_fp32"][b]["speedup"])
            for b in timings["dense"]}
    return {"reference": "dense", "reference_top1": accuracy["dense"]["onnxruntime"], "max_drop": limit,
            "candidates": candidates, "best": best}


def slowest_layers(run, sample: np.ndarray, threads: int, batch: int = 1) -> dict:
    """The ten nodes with the most kernel time in the dense and the compressed fp32 graph (ORT's profile)."""
    from calibration.layer_profile import slowest_nodes
    from calibration.latency import tile_batch

    x = tile_batch(sample, batch)
    return {"batch": batch, "calls": PROFILE_CALLS,
            **{kind: slowest_nodes(run.verified(name), x, threads=threads)
               for kind, name in (("dense", DENSE_ONNX), ("compressed", MODEL_ONNX))}}


def target(manifest, shipping: dict) -> dict | None:
    """compress's --speedup against this report: the graph to ship at the target batch and its speedup
    over the dense fp32 graph, measured here (ONNX Runtime CPU), and whether that meets the target."""
    t = (manifest.metrics or {}).get("target") or {}
    if not t.get("speedup"):
        return None
    b = str(t["batch"])
    out = {"speedup": t["speedup"], "budget_by": t["budget_by"], "runtime": t["runtime"], "batch": t["batch"],
           "at_compress": (t.get("latency") or {}).get("measured"), "accuracy": t.get("accuracy")}
    if t["runtime"] != "ort-cpu" or b not in shipping["best"]:
        return out | {"shipped": None}  # this report measures ONNX Runtime CPU only
    graph = shipping["best"][b]
    sp = shipping["candidates"][graph]["speedup_vs_dense_fp32"][b]
    met = sp["speedup"] >= t["speedup"] * (1 - TOLERANCE)
    return out | {"shipped": {"graph": graph, **sp, "met": met}}


def gpu(loaded: LoadedRun, sample: np.ndarray, ships_prompt: bool, device: torch.device, budget_s: float,
        reporter: Reporter) -> dict:
    """Dense vs compressed PyTorch (eager, fp32) on the CUDA GPU, CUDA events, interleaved: the GPU row
    every report gets where a GPU is visible, TensorRT or not."""
    if device.type != "cuda":
        return {"measured": False, "reason": "no CUDA GPU visible"}
    runtimes = {"dense": TorchRuntime(on_device(loaded.dense_model(), device), device, False, "dense"),
                "compressed": TorchRuntime(on_device(loaded.prompted(ships_prompt), device), device, ships_prompt,
                                           "compressed")}
    timings = timed("PyTorch CUDA", runtimes, sample, budget_s, reporter)
    return {"measured": True, "runtime": "PyTorch eager fp32, CUDA events (batch already on the GPU)",
            "device": torch.cuda.get_device_name(device), "latency_ms": as_json(timings),
            "speedup": {b: speedup(timings["dense"][b], timings["compressed"][b]).to_dict() for b in timings["dense"]}}


def tensorrt(run, test, sample: np.ndarray, budget_s: float, reporter: Reporter) -> dict:
    """Engine top-1 and latency (CUDA events) where export built engines and a GPU is here."""
    built = run.manifest.export.tensorrt or {}
    providers = ort_gpu_providers(run.file(MODEL_ONNX))
    if not built.get("built"):
        return {"measured": False, "reason": built.get("reason") or "export ran without --trt",
                "ort_providers": providers}
    from export.tensorrt_engine import EngineRunner

    engines = {}
    for precision, info in built["engines"].items():
        reporter.line(f"measuring TensorRT {precision} engine")
        runner = EngineRunner(run.verified(Path(info["path"]).name))
        timings = timed(f"TensorRT {precision}", {precision: runner}, sample, budget_s, reporter)
        engines[precision] = {"top1": top1(runner, test), "latency_ms": as_json(timings)[precision],
                              "sparse_layers": info["sparse_layers"]}
    return {"measured": True, "engines": engines, "ort_providers": providers}
