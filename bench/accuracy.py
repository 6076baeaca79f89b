"""Accuracy benchmark: VPNs vs HYDRA vs magnitude vs dense fine-tune, same optimiser steps.

Each cell (method, sparsity, seed) is one independent run from the pretrained model. VPNs takes two
optimiser steps per batch, so HYDRA and magnitude get twice its epochs and dense fine-tuning four
times (it has no second stage): every method takes the same number of optimiser steps.

Resumable: finished cells are kept in the results JSON (written atomically after every cell) and
skipped when the grid is run again with the same budget. Usage (see docs/benchmarks.md):

    python -m bench.accuracy --model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 \\
        --data tar:../shared/data/cifar10-jpeg.tar.gz --epochs 1
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipelines.compress_stage import prepare_inputs, run_compress
from pipelines.run_dir import RunDir, now, versions
from vpns_deploy.atomic import atomic_write, atomic_write_json
from vpns_deploy.compress import dense_finetune
from vpns_deploy.config import REFERENCE_LR_SCORES, CompressConfig
from vpns_deploy.device import resolve_device
from vpns_deploy.progress import Reporter
from vpns_deploy.schedules import SCHEDULE_STEP

METHOD_ORDER = ("dense", "magnitude", "hydra", "vpns", "magnitude_kd", "hydra_kd", "vpns_kd")
KD_SUFFIX = "_kd"  # the same method with --distill (stage 2 / the fine-tune learns from the dense logits)


def base_method(method: str) -> str:
    """"vpns_kd" -> "vpns": the method a grid name runs, with or without distillation."""
    return method.removesuffix(KD_SUFFIX)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--methods", default="dense,magnitude,hydra,vpns",
                   help="any of " + ",".join(METHOD_ORDER) + "; a _kd name runs the method with --distill")
    p.add_argument("--sparsities", default="0.5,0.7,0.9")
    p.add_argument("--seeds", default="7", help="seeds for every sparsity")
    p.add_argument("--extra-seeds", default="9", help="more seeds at --extra-seeds-at (mean and spread)")
    p.add_argument("--extra-seeds-at", default="0.9")
    p.add_argument("--epochs", type=int, default=1, help="VPNs epochs per stage; baselines get twice as many")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--pad", type=int, default=None)
    p.add_argument("--lr-prompt-mask", type=float, default=None)
    p.add_argument("--lr-prompt-tune", type=float, default=None)
    p.add_argument("--lr-scores", type=_lr_or_auto, default=None,
                   help="score optimiser lr (VPNs and HYDRA): a number, or 'auto' for the product default "
                        "(SCORE_LR_RULE); default: the reference's 1e-4")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("bench/results/accuracy.json"))
    p.add_argument("--runs", type=Path, default=Path("bench/runs"), help="run directories (not committed)")
    return p.parse_args(argv)


def _lr_or_auto(text: str) -> float | str:
    return text if text == "auto" else float(text)


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def grid(args: argparse.Namespace) -> list[tuple[str, float | None, int]]:
    """(method, sparsity, seed) cells; dense has no sparsity and runs once per seed."""
    methods = [m for m in METHOD_ORDER if m in args.methods.split(",")]
    sparsities, seeds = _floats(args.sparsities), _ints(args.seeds)
    extra_at = _floats(args.extra_seeds_at)
    extra = _ints(args.extra_seeds)
    cells: list[tuple[str, float | None, int]] = []
    all_seeds = seeds + [s for s in extra if s not in seeds]
    for method in methods:
        if method == "dense":
            cells += [("dense", None, s) for s in (all_seeds if extra_at else seeds)]
            continue
        for sp in sparsities:
            cells += [(method, sp, s) for s in (all_seeds if sp in extra_at else seeds)]

    def priority(cell: tuple[str, float | None, int]) -> tuple:
        # The headline cells first (the extra-seed sparsities, first seed, then the extra seeds),
        # so a grid cut short still answers the main question; then the rest, sparsest first.
        method, sp, seed = cell
        headline = sp is None or sp in extra_at
        phase = (0 if seed in seeds else 1) if headline else 2
        return (phase, -(sp if sp is not None else 2.0), seed, methods.index(method))

    return sorted(cells, key=priority)


def cell_key(method: str, sparsity: float | None, seed: int) -> str:
    return f"{method}-s{sparsity:g}-seed{seed}" if sparsity is not None else f"{method}-seed{seed}"


def budget(args: argparse.Namespace) -> dict:
    return {"schedule": SCHEDULE_STEP, "vpns_epochs_per_stage": args.epochs, "batch_size": args.batch_size,
            "train_subset": args.train_subset, "test_subset": args.test_subset, "pad": args.pad,
            "lr_prompt_mask": args.lr_prompt_mask, "lr_prompt_tune": args.lr_prompt_tune,
            "lr_scores": args.lr_scores}


def same_budget(a: dict, b: dict) -> bool:
    """Keys added to the budget later read as None (the default) in older result files."""
    return all(a.get(k) == b.get(k) for k in a.keys() | b.keys())


def config_for(args: argparse.Namespace, method: str, sparsity: float | None, seed: int) -> CompressConfig:
    e = args.epochs
    method, distill = base_method(method), method.endswith(KD_SUFFIX)
    optim = CompressConfig().optim
    if args.lr_prompt_mask is not None:
        optim = replace(optim, lr_prompt_mask=args.lr_prompt_mask)
    if args.lr_prompt_tune is not None:
        optim = replace(optim, lr_prompt_tune=args.lr_prompt_tune)
    # The grids compare methods under the reference's optimisers unless told otherwise.
    lr_scores = {None: REFERENCE_LR_SCORES, "auto": None}.get(args.lr_scores, args.lr_scores)
    optim = replace(optim, lr_scores=lr_scores)
    # Equal optimiser steps: VPNs steps twice per batch (see the module docstring).
    epochs = {"vpns": (e, e), "hydra": (2 * e, 2 * e), "magnitude": (2 * e, 2 * e)}.get(method, (0, 0))
    return CompressConfig(
        method=method if method != "dense" else "magnitude", sparsity=sparsity or 0.5,
        epochs_mask=epochs[0], epochs_tune=epochs[1], batch_size=args.batch_size, pad=args.pad,
        seed=seed, device=args.device, train_subset=args.train_subset, test_subset=args.test_subset,
        optim=optim, distill=distill,
    )


def _epochs_summary(epochs: list[dict]) -> list[dict]:
    """Per epoch: cumulative train seconds and optimiser steps, validation top-1 (both ways) and the
    test top-1 measured at the end of each stage (None on other epochs)."""
    out, secs, steps = [], 0.0, 0
    for e in epochs:
        secs += e["train_seconds"]
        steps += e["optimizer_steps"]
        out.append({"stage": e["stage"], "epoch": e["epoch"], "train_seconds_cum": secs, "steps_cum": steps,
                    "top1_plain": e["test_acc_plain"], "top1_prompted": e["test_acc_prompted"],
                    "val_top1_plain": e.get("val_acc_plain"), "val_top1_prompted": e.get("val_acc_prompted"),
                    "prompt_mean_abs": e.get("prompt_mean_abs")})
    return out


def run_cell(args: argparse.Namespace, method: str, sparsity: float | None, seed: int) -> dict:
    cfg = config_for(args, method, sparsity, seed)
    reporter = Reporter()
    t0 = time.perf_counter()
    if method == "dense":
        loaded, splits = prepare_inputs(args.model, args.arch, args.data, cfg)
        epochs = 4 * args.epochs
        hist = [r.to_dict() for r in dense_finetune(loaded, splits, cfg, epochs, resolve_device(args.device), reporter)]
        final_plain, final_prompted, achieved = hist[-1]["test_acc_plain"], None, 0.0
        stage_step = {"finetune": sum(h["train_seconds"] for h in hist) / sum(h["optimizer_steps"] for h in hist)}
    else:
        out = args.runs / cell_key(method, sparsity, seed)
        run_compress(args.model, args.arch, args.data, cfg, out, overwrite=True, reporter=reporter)
        m = RunDir.open(out).manifest.metrics
        hist = m["epochs"]
        final_plain, final_prompted, achieved = m["top1_plain"], m["top1_prompted"], m["sparsity"]
        stage_step = {}
        for stage in ("mask", "tune"):
            rows = [h for h in hist if h["stage"] == stage]
            if rows:
                stage_step[stage] = sum(h["train_seconds"] for h in rows) / sum(h["optimizer_steps"] for h in rows)
    return {
        "method": method, "sparsity": sparsity, "seed": seed,
        "top1_plain": final_plain, "top1_prompted": final_prompted, "sparsity_achieved": achieved,
        "optimizer_steps": sum(h["optimizer_steps"] for h in hist),
        "train_seconds": sum(h["train_seconds"] for h in hist),
        "wall_seconds": time.perf_counter() - t0,
        "seconds_per_step": stage_step,
        "curve": _epochs_summary(hist),
    }


def load_results(path: Path, args: argparse.Namespace) -> dict:
    import json

    if path.exists():
        results = json.loads(path.read_text())
        if same_budget(results.get("budget", {}), budget(args)):
            return results
        print(f"note: {path} holds another budget; starting a fresh grid", file=sys.stderr)
    return {"budget": budget(args), "cells": {}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = load_results(args.out, args)
    cells = grid(args)
    for i, (method, sparsity, seed) in enumerate(cells, 1):
        key = cell_key(method, sparsity, seed)
        if key in results["cells"]:
            print(f"[{i}/{len(cells)}] {key}: done earlier, skipped", file=sys.stderr)
            continue
        print(f"[{i}/{len(cells)}] {key}", file=sys.stderr)
        # The record names the process that measures; a re-run that only redraws keeps it.
        results["command"] = "python -m bench.accuracy " + shlex.join(sys.argv[1:] if argv is None else argv)
        results["machine"] = {**versions(), "threads": torch.get_num_threads(),
                              "device": str(resolve_device(args.device))}
        results["cells"][key] = run_cell(args, method, sparsity, seed)
        results["updated"] = now()
        atomic_write_json(args.out, results)
    from bench.accuracy_summary import plot, summarise, table

    results["summary"] = summarise(results)
    atomic_write_json(args.out, results)
    png = args.out.with_suffix(".png")
    atomic_write(png, lambda tmp: plot(results, Path(tmp)))
    print(table(results))
    print(f"results: {args.out}  plot: {png}")
    return results


if __name__ == "__main__":
    main()
