"""Probe: ONNX Runtime's int8 formats on this CPU, through the product's own quantiser and timer.

The dense network of MODEL is exported as the product's deployed graph (export.deploy_graph), then
quantised by export.precision.to_int8 as Q/DQ and as QOperator, per channel and (unless --per-channel-only)
per tensor, calibrated on the same training images; each is compared with fp32 on test images
(calibration.parity.compare_graphs) and all are timed interleaved (calibration.latency) at batch 1
and 64. Export makes the same Q/DQ-vs-QOperator measurement on every int8 export
(export/int8_format.py); this probe adds fp32 and per-tensor for context.

    python -m bench.probes.int8_format --model ../shared/models/cifar10/resnet20-12fca82f.th \\
        --arch cifar_resnet20 --data tar:../shared/data/cifar10-jpeg.tar.gz --budget 5
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from calibration.calibrator import ImageCalibrationReader, calibration_images
from calibration.cpu import cpu_facts
from calibration.feeds import nhwc_uint8
from calibration.latency import latency_by_batch, speedup
from calibration.parity import compare_graphs
from calibration.runtime import OrtRuntime
from calibration.session import cpu_session, cpu_threads
from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from export.precision import INT8_FORMATS, to_int8
from vpns_deploy.data import load_splits
from vpns_deploy.models import load_model


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kind in (("--model", Path), ("--arch", str), ("--data", str)):
        p.add_argument(name, type=kind, required=True)
    for name, default, text in (("--num-classes", 10, "classes of MODEL's head"),
                                ("--budget", 5.0, "seconds of timed calls per graph"),
                                ("--calib-images", 256, "calibration images (class-balanced, training split)"),
                                ("--test-subset", 1000, "test images for the agreement with fp32")):
        p.add_argument(name, type=type(default), default=default, help=text)
    p.add_argument("--per-channel-only", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = p.parse_args(argv)
    loaded = load_model(args.model, args.arch, args.num_classes)
    splits = load_splits(args.data, loaded.inputs, test_subset=args.test_subset, train_subset=4 * args.calib_images)
    tmp = Path(tempfile.mkdtemp(prefix="int8-probe-"))
    graphs = {"fp32": tmp / "fp32.onnx"}
    export_onnx(DeployGraph(loaded.net.eval(), loaded.inputs, None, None),
                torch.from_numpy(nhwc_uint8(splits.test, 0, 2)), graphs["fp32"])
    calib = calibration_images(splits.train, args.calib_images, 0)
    results: dict = {"graphs": {}}
    for fmt in INT8_FORMATS:
        for per_channel in (True,) if args.per_channel_only else (True, False):
            name = f"{fmt}-{'per-channel' if per_channel else 'per-tensor'}"
            t0 = time.perf_counter()
            to_int8(graphs["fp32"], tmp / f"{name}.onnx", ImageCalibrationReader(calib), fmt, per_channel)
            graphs[name] = tmp / f"{name}.onnx"
            agree = compare_graphs(graphs["fp32"], graphs[name], splits.test)
            results["graphs"][name] = {"quantise_seconds": time.perf_counter() - t0, "vs_fp32": agree.to_dict()}
            print(f"{name}: quantised in {time.perf_counter() - t0:.1f} s; top-1 agreement with fp32 "
                  f"{agree.top1_agreement:.2%} on {agree.images} test images", flush=True)
    threads, facts = cpu_threads(), cpu_facts()
    runtimes = {k: OrtRuntime(cpu_session(v, threads), k) for k, v in graphs.items()}
    lat = latency_by_batch(runtimes, nhwc_uint8(splits.test, 0, 64), args.budget)
    results |= {"cpu": facts.to_dict(), "threads": threads, "budget_s": args.budget, "latency_ms": {}}
    print(f"CPU: {facts.model}; {', '.join(facts.instruction_sets)}; ORT threads {threads}", flush=True)
    for b in lat["fp32"]:
        for k in runtimes:
            l, sp = lat[k][b], speedup(lat["qdq-per-channel"][b], lat[k][b])
            results["latency_ms"].setdefault(k, {})[b] = l.to_dict() | {"vs_qdq_per_channel": sp.to_dict()}
            print(f"batch {b:>2} {k:<22} median {l.median_ms:9.3f} ms [{l.ci95_ms[0]:.3f}, {l.ci95_ms[1]:.3f}] "
                  f"runs {l.runs:3d}  speed vs qdq-per-channel {sp.speedup:.2f}x [{sp.ci95[0]:.2f}, {sp.ci95[1]:.2f}]")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
