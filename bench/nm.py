"""2:4 benchmark: dense vs VPNs 2:4 on the pretrained ResNet-56, fp32 / fp16 / int8.

One VPNs 2:4 run (E mask + E tune epochs) through the product's own stages: compress, export with
fp16 and int8 (static Q/DQ, 512 calibration images), report. Saves top-1 (full test split) and ONNX
Runtime CPU latency per precision for dense and 2:4, the N:M pattern read back from the int8 file,
and the TensorRT rows as "not measured" with the reason unless a GPU built engines. Phase `train`
may share the machine; phase `measure` (the report: it times) wants an idle one.

    python -m bench.nm --model ../shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 \\
        --data tar:../shared/data/cifar10-jpeg.tar.gz --epochs 1
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from pipelines.compress_stage import run_compress
from pipelines.export_stage import run_export
from pipelines.report_stage import run_report
from pipelines.run_dir import MANIFEST, RunDir, now, versions
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.config import CompressConfig
from vpns_deploy.progress import Reporter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--mode", default="2:4")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--phase", choices=("train", "measure", "all"), default="all")
    p.add_argument("--out", type=Path, default=Path("bench/results/nm.json"))
    p.add_argument("--run", type=Path, default=Path("bench/runs/nm/vpns-2of4"))
    return p.parse_args(argv)


def summarise(run_dir: Path) -> dict:
    run = RunDir.open(run_dir)
    report = json.loads(run.verified("report.json").read_text())
    m = run.manifest
    rows = {}
    for precision in ("fp32", "fp16", "int8"):
        for kind in ("dense", "compressed"):
            if precision == "fp32":
                top1 = report["accuracy"][kind]["onnxruntime"]
                lat = report["latency_ms"][kind]
            else:
                top1 = report["precision"][precision][kind]["onnxruntime"]
                lat = report["precision"][precision][kind]["latency_ms"]
            rows[f"{kind}-{precision}"] = {"top1": top1, **{f"b{b}": {"median_ms": v["median_ms"], "p90_ms": v["p90_ms"]}
                                                            for b, v in lat.items()}}
    return {
        "rows": rows,
        "sparsity": m.metrics["sparsity"],
        "exempt": m.metrics["structure"]["exempt"],
        "nm_pattern": m.export.graphs["model.onnx"]["nm_pattern"],
        "tensorrt": report["tensorrt"],
        "top1_prompted_pytorch": m.metrics["top1_prompted"],
        "top1_plain_pytorch": m.metrics["top1_plain"],
        "dense_top1_pytorch": m.metrics["dense_top1"],
        "train_seconds": sum(e["train_seconds"] for e in m.metrics["epochs"]),
        "test_images": report["test_images"],
        "measured": report["created"],
        "threads": report["machine"]["threads"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.phase in ("train", "all"):
        if not (args.run / MANIFEST).is_file():
            cfg = CompressConfig(mode=args.mode, epochs_mask=args.epochs, epochs_tune=args.epochs, seed=args.seed,
                                 train_subset=args.train_subset)
            run_compress(args.model, args.arch, args.data, cfg, args.run, reporter=Reporter())
        if RunDir.open(args.run).manifest.export is None:
            run_export(args.run, reporter=Reporter(), precisions=("fp32", "fp16", "int8"),
                       calib_images=args.calib_images, trt=True)
    results = {"command": "python -m bench.nm " + shlex.join(sys.argv[1:] if argv is None else argv),
               "machine": versions(), "run": str(args.run)}
    if args.phase in ("measure", "all"):
        run_report(args.run, reporter=Reporter(), print_table=True)
        results.update(summarise(args.run), updated=now())
        atomic_write_json(args.out, results)
        print(json.dumps(results["rows"], indent=1))
    return results


if __name__ == "__main__":
    main()
