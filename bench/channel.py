"""Channel benchmark: VPNs channel mode vs Torch-Pruning's own pruner at a MACs target.

Cells, each from the same pretrained model, same data, augmentation, batch and weight optimiser:
  vpns       vpns-deploy channel mode, --speedup X: E mask epochs + E tune epochs (two passes each)
  hydra      the same without the prompt (one pass): 2E + 2E epochs (equal optimiser steps)
  magnitude  our L1 channel baseline: 4E tune epochs (equal optimiser steps)
  tp         the product's --method tp-groupnorm: Torch-Pruning's iterative pruner (BasePruner +
             GroupMagnitudeImportance(p=2), group norm, global, round_to as ours) until MACs <= dense / X,
             then 2E fine-tune epochs (the same fine-tune optimiser steps as VPNs' stage 2). Until
             2026-12-02 this cell ran its own copy of that recipe (git show 7e38d10:bench/channel.py)
  tp_steps   the same with 4E fine-tune epochs (the same total optimiser steps as VPNs)
  vpns_slow  vpns with channel scores on Adam 1e-3 instead of 1e-2 (stage 1 refines the initial
             mask instead of reshuffling it)
  vpns_widths  vpns with channel_widths "init": Torch-Pruning's widths kept, stage 1 re-picks
             which channels of each group survive
  vpns_l1init  vpns with scores starting at the one-shot L1 ranking (channel_init "l1", the default
             before Torch-Pruning's group-norm mask)
  vpns_half  vpns whose stage 1 runs half of each epoch's batches (mask_batches_fraction 0.5):
             E/2 + E epochs' worth of steps, 3E x 196 at the full split
  tp_3e      tp with 3E fine-tune epochs: the same total optimiser steps as vpns_half
  vpns_tune  VPNs' prompted two-pass fine-tune from Torch-Pruning's mask: stage 1 cut to one batch
             (mask_batches_fraction 1e-3: 2 steps at Adam 1e-2 on scores near 1, so at most near-ties
             change: the mask is Torch-Pruning's group-norm one) and 2E tune
             epochs: 2 + 4E x 196 steps, tp_steps' budget (+2). Asks whether VPNs' steps pay in stage 2
             rather than stage 1
  vpns_kd, tp_steps_kd, vpns_tune_kd  vpns, tp_steps and vpns_tune with --distill (stage 2 / the fine-tune learns from the
             dense network's logits; the same optimiser steps, the teacher's passes cost wall-clock only)

Every cell is one run of the product (compress + export: ONNX with ORT parity checked), so the
benchmark measures exactly what `vpns-deploy compress` ships. Phase `train` (resumable: finished
cells are kept in the JSON) makes the runs; phase `latency` times every ONNX with ONNX Runtime on the CPU. Run `latency` on an
idle machine: it is the only timed part. Every phase redraws the PNG beside the JSON (top-1 vs total optimiser
steps per method family, bench/channel_plot.py).

    python -m bench.channel --model ../shared/models/cifar10/resnet56-4bfd9763.th --arch cifar_resnet56 \\
        --data tar:../shared/data/cifar10-jpeg.tar.gz --speedup 2 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.channel_plot import plot
from bench.transfer_summary import shipped
from calibration.feeds import nhwc_uint8
from calibration.latency import latency_by_batch
from calibration.runtime import OrtRuntime
from calibration.session import cpu_session, cpu_threads
from pipelines.compress_stage import run_compress
from pipelines.export_stage import run_export
from pipelines.run_dir import RunDir, now, versions
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.config import CompressConfig
from vpns_deploy.progress import Reporter
from vpns_deploy.schedules import SCHEDULE_STEP

CELLS = ("vpns", "tp", "tp_steps", "hydra", "magnitude", "vpns_slow", "vpns_l1init", "vpns_widths", "vpns_kd",
         "tp_steps_kd", "vpns_half", "tp_3e", "vpns_tune", "vpns_tune_kd")
TUNE_ONLY_FRACTION = 1e-3  # vpns_tune: stage 1 runs max(1, round(batches x this)) = one batch below 500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--epochs", type=int, default=1, help="VPNs epochs per stage (E)")
    p.add_argument("--round-to", type=int, default=CompressConfig().channel_round_to)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=CompressConfig().val_fraction,
                   help="held-out validation share of the training split (0: the 50k cells of 2026-11-24)")
    p.add_argument("--phase", choices=("train", "latency", "all"), default="all")
    p.add_argument("--out", type=Path, default=Path("bench/results/channel.json"))
    p.add_argument("--runs", type=Path, default=Path("bench/runs/channel"))
    return p.parse_args(argv)


def _cfg(args: argparse.Namespace, method: str = "vpns", mask: int = 0, tune: int = 0) -> CompressConfig:
    """One cell's base: channel_split pinned to "even" (the product default from 2026-12-04 is "tune",
    which is the vpns_tune cell), so every cell keeps the split it was measured with."""
    return CompressConfig(method=method, mode="channel", speedup=args.speedup, epochs_mask=mask, epochs_tune=tune,
                          channel_split="even",
                          batch_size=args.batch_size, seed=args.seed, train_subset=args.train_subset,
                          test_subset=args.test_subset, val_fraction=args.val_fraction,
                          channel_round_to=args.round_to)


def budget(args: argparse.Namespace) -> dict:
    """What makes cells comparable; a JSON with another budget is started afresh. A validation split is
    named only when there is one: the cells of 2026-11-24 (no split) keep their budget."""
    keys = ("arch", "speedup", "epochs", "round_to", "batch_size", "seed", "train_subset", "test_subset")
    val = {"val_fraction": args.val_fraction} if args.val_fraction else {}
    return {"schedule": SCHEDULE_STEP, **{k: getattr(args, k) for k in keys}, **val}


def _cell_config(args: argparse.Namespace, cell: str) -> CompressConfig:
    """Each cell's product configuration (equal optimiser steps: VPNs takes two per batch)."""
    e = args.epochs
    vpns, tp_steps = _cfg(args, "vpns", e, e), _cfg(args, "tp-groupnorm", 0, 4 * e)
    vpns_tune = replace(vpns, epochs_tune=2 * e, mask_batches_fraction=TUNE_ONLY_FRACTION)
    return {"vpns": vpns, "hydra": _cfg(args, "hydra", 2 * e, 2 * e), "magnitude": _cfg(args, "magnitude", 0, 4 * e),
            "tp": _cfg(args, "tp-groupnorm", 0, 2 * e), "tp_steps": tp_steps,
            "vpns_slow": replace(vpns, optim=replace(vpns.optim, lr_channel_scores=1e-3)),
            "vpns_l1init": replace(vpns, channel_init="l1"),
            "vpns_widths": replace(vpns, channel_widths="init"),
            "vpns_kd": replace(vpns, distill=True), "tp_steps_kd": replace(tp_steps, distill=True),
            "vpns_half": replace(vpns, mask_batches_fraction=0.5), "tp_3e": _cfg(args, "tp-groupnorm", 0, 3 * e),
            "vpns_tune": vpns_tune, "vpns_tune_kd": replace(vpns_tune, distill=True)}[cell]


def run_cell(args: argparse.Namespace, cell: str) -> dict:
    """One product run (compress + export) and the fields of its cell in the JSON."""
    t0 = time.perf_counter()
    out = args.runs / cell
    run_compress(args.model, args.arch, args.data, _cell_config(args, cell), out, overwrite=True, reporter=Reporter())
    run_export(out, reporter=Reporter())
    m = RunDir.open(out).manifest
    s = m.metrics["structure"]
    hist = m.metrics["epochs"]
    return {"top1": shipped(m.metrics),  # the model it ships: prompted only where validation folded the prompt
            "top1_plain": m.metrics["top1_plain"], "macs": s["macs"]["compressed"],
            "dense_macs": s["macs"]["dense"], "params": s["params"]["compressed"], "dense_params": s["params"]["dense"],
            "optimizer_steps": sum(h["optimizer_steps"] for h in hist),
            "train_seconds": sum(h["train_seconds"] for h in hist),
            "onnx": str(out / "model.onnx"), "dense_onnx": str(out / "dense.onnx"),
            "wall_seconds": time.perf_counter() - t0, "macs_reduction": s["macs"]["dense"] / s["macs"]["compressed"]}


def measure(results: dict, data: str) -> None:
    """ORT CPU latency (median, p90) of every cell's graph and the dense one, batch 1 and 64."""
    from vpns_deploy.data import load_splits

    test = load_splits(data).test
    sample = nhwc_uint8(test, 0, 64)
    threads = cpu_threads()
    dense_onnx = next(c["dense_onnx"] for c in results["cells"].values() if "dense_onnx" in c)
    lat = {}
    for name, path in [("dense", dense_onnx)] + [(k, c["onnx"]) for k, c in results["cells"].items()]:
        runtime = OrtRuntime(cpu_session(Path(path), threads), name)
        lat[name] = {b: v.to_dict() for b, v in latency_by_batch({name: runtime}, sample)[name].items()}
    for name, cell in results["cells"].items():
        cell["latency_ms"] = lat[name]
        cell["speedup"] = {b: lat["dense"][b]["median_ms"] / lat[name][b]["median_ms"] for b in lat[name]}
        cell["efficiency"] = {b: s / cell["macs_reduction"] for b, s in cell["speedup"].items()}
    results["dense_latency_ms"] = lat["dense"]
    results["latency_measured"] = {"at": now(), "threads": threads,
                                   "runs": "calibration.latency: up to MAX_RUNS within DEFAULT_BUDGET_S per graph"}


def table(results: dict) -> str:
    rows = ["| cell | top-1 | params | MACs (M) | MACs ratio | ORT b1 ms (p90) | ORT b64 ms (p90) | eff. b1 | eff. b64 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    d = results.get("dense_latency_ms")
    if d:
        rows.append(f"| dense | {results.get('dense_top1', float('nan')):.2%} | | | 1.00 | "
                    f"{d['1']['median_ms']:.2f} ({d['1']['p90_ms']:.2f}) | {d['64']['median_ms']:.1f} "
                    f"({d['64']['p90_ms']:.1f}) | | |")
    for name, c in results["cells"].items():
        lat = c.get("latency_ms")
        lat_txt = (f"{lat['1']['median_ms']:.2f} ({lat['1']['p90_ms']:.2f}) | {lat['64']['median_ms']:.1f} "
                   f"({lat['64']['p90_ms']:.1f}) | {c['efficiency']['1']:.2f} | {c['efficiency']['64']:.2f}"
                   if lat else "not measured | | |")
        rows.append(f"| {name} | {c['top1']:.2%} | {c['params']:,} | {c['macs'] / 1e6:.2f} | "
                    f"{c['macs_reduction']:.2f} | {lat_txt} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if results.get("budget") != budget(args):
        results = {"budget": budget(args), "cells": {}}
    record = {"command": "python -m bench.channel " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": {**versions(), "threads": torch.get_num_threads()}}
    if args.phase in ("train", "all"):
        for cell in [c for c in args.cells.split(",") if c in CELLS]:  # in the order asked for
            if cell in results["cells"]:
                print(f"{cell}: done earlier, skipped", file=sys.stderr)
                continue
            print(f"== {cell}", file=sys.stderr)
            results.update(record)  # the record names the process that measures; a redraw keeps it
            results["cells"][cell] = run_cell(args, cell)
            results["updated"] = now()
            atomic_write_json(args.out, results)
        vpns_run = args.runs / "vpns"
        if vpns_run.exists():
            results["dense_top1"] = RunDir.open(vpns_run).manifest.metrics["dense_top1"]
    if args.phase in ("latency", "all"):
        results.update(record)
        measure(results, args.data)
    atomic_write_json(args.out, results)
    if results["cells"]:
        plot(results, args.out.with_suffix(".png"))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
