"""Regenerate one table of the results page (docs/benchmarks.md) from the committed results, by name.

    python -m bench TABLE          # accuracy, floor, channel, transfer, precision, int8, throughput
    python -m bench --list

Grid tables (accuracy, channel, transfer) re-run their engine with the arguments the committed JSON was
measured with. Every cell is already in that JSON, so nothing trains: the engine redraws its summary and
PNG and prints its table, and the JSON's record of what measured it is kept. A grid that would have to
train a missing cell is refused. Measurement tables (precision, throughput) print from their JSON:
measuring again is the engine's own command, recorded in that JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
MODELS = ROOT.parent / "shared/models/cifar10"
DATA = f"tar:{ROOT.parent / 'shared/data/cifar10-jpeg.tar.gz'}"


class WouldTrain(SystemExit):
    """A table's grid lacks cells, so regenerating it would train: refused."""


def _refuse_missing(name: str, wanted: list[str], have: dict) -> None:
    missing = [k for k in wanted if k not in have]
    if missing:
        raise WouldTrain(f"error: {name} lacks cells {', '.join(missing)}; regenerating would train them. "
                         "Run the engine's own command to measure them.")


def _accuracy_argv() -> list[str]:
    """The ResNet-20 grid at 70 % and 50 % under the current defaults (90 % is the floor's 50k-e1 budget)."""
    return ["--model", str(MODELS / "resnet20-12fca82f.th"), "--arch", "cifar_resnet20", "--data", DATA,
            "--methods", "magnitude,magnitude_kd,hydra,vpns", "--sparsities", "0.7,0.5", "--seeds", "7",
            "--extra-seeds", "", "--epochs", "1", "--lr-scores", "auto",
            "--out", str(RESULTS / "accuracy-2026-12-03.json"), "--runs", str(ROOT / "bench/runs/acc-2026-12-03")]


def accuracy() -> None:
    """ResNet-20 top-1 by sparsity at equal optimiser steps (accuracy-2026-12-03.json, floor/50k-e1.json)."""
    from bench import accuracy as engine
    from bench.accuracy_compare import cells_by_key
    from bench.accuracy_summary import METHOD_LABELS, shipped_top1

    argv = _accuracy_argv()
    args = engine.parse_args(argv)
    _refuse_missing(args.out.name, [engine.cell_key(*c) for c in engine.grid(args)],
                    json.loads(args.out.read_text())["cells"])
    engine.main(argv)
    cells = cells_by_key([RESULTS / "floor/50k-e1.json", args.out])
    print("\n| sparsity | method | top-1 % (shipped) | seeds |\n|---|---|---:|---|")
    for (method, sp), by_seed in sorted(cells.items(), key=lambda kv: (-(kv[0][1] or 1.0), kv[0][0])):
        mean = sum(shipped_top1(c) for c in by_seed.values()) / len(by_seed)
        print(f"| {'-' if sp is None else f'{sp:g}'} | {METHOD_LABELS.get(method, method)} | "
              f"{100 * mean:.2f} | {', '.join(map(str, sorted(by_seed)))} |")


def floor() -> None:
    """ResNet-20 at 90 % over training budgets, with and without distillation (floor/*.json)."""
    from bench import floor as engine

    engine.main(["--only", "none"])


CHANNEL_FILES = ("channel-equal-steps", "channel-equal-steps-seed9", "channel-equal-steps-e2", "channel")


def channel() -> None:
    """ResNet-56 channel mode vs Torch-Pruning at equal steps, and latency (channel*.json)."""
    from bench import channel as engine

    for name in CHANNEL_FILES:
        path = RESULTS / f"{name}.json"
        saved = json.loads(path.read_text())
        b = saved["budget"]
        argv = ["--model", str(MODELS / "resnet56-4bfd9763.th"), "--arch", b["arch"], "--data", DATA,
                "--speedup", f"{b['speedup']:g}", "--epochs", str(b["epochs"]), "--seed", str(b["seed"]),
                "--val-fraction", f"{b.get('val_fraction', 0):g}", "--cells", ",".join(saved["cells"]),
                "--phase", "train", "--out", str(path), "--runs", str(ROOT / "bench/runs" / name)]
        print(f"\n{name}: seed {b['seed']}, VPNs {b['epochs']} + {b['epochs']} epochs' steps")
        engine.main(argv)
        cells = json.loads(path.read_text())["cells"]
        print("| cell | optimiser steps | top-1 % (shipped) |\n|---|---:|---:|")
        for cell, c in cells.items():
            print(f"| {cell} | {c['optimizer_steps']} | {100 * c['top1']:.2f} |")


def transfer() -> None:
    """EfficientNet-Lite0 -> CIFAR-10 with the zero-prompt control (transfer.json, transfer-160.json)."""
    from bench import transfer as engine

    for extra in (["--out", str(RESULTS / "transfer.json"), "--runs", str(ROOT / "bench/runs/transfer")],
                  ["--input-size", "160", "--out", str(RESULTS / "transfer-160.json"),
                   "--runs", str(ROOT / "bench/runs/transfer-160"), "--cells", "vpns-s0.9-seed7,vpns-zero-s0.9-seed7"]):
        args = engine.parse_args(extra)
        keys = [k for k in args.cells.split(",") if k] or [engine.cell_key(*c) for c in engine.grid()]
        _refuse_missing(args.out.name, keys, engine.finished_cells(args))
        engine.main(extra)


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.2f}"


def precision() -> None:
    """2:4 ResNet-56 in fp32 / fp16 / int8 (nm.json), int8 formats on ResNet-20 (int8_format_resnet20.json)."""
    nm = json.loads((RESULTS / "nm.json").read_text())
    print("| graph | top-1 % | ORT b1 ms | ORT b64 ms |\n|---|---:|---:|---:|")
    for name, r in nm["rows"].items():
        print(f"| {name} | {100 * r['top1']:.2f} | {_ms(r['b1'])} | {_ms(r['b64'])} |")
    fmt = json.loads((RESULTS / "int8_format_resnet20.json").read_text())
    print("\n| graph | top-1 agreement with fp32 % | ORT b1 ms | ORT b64 ms | b64 speed vs Q/DQ per channel |\n"
          "|---|---:|---:|---:|---:|")
    for name, lat in fmt["latency_ms"].items():
        agree = fmt["graphs"].get(name, {}).get("vs_fp32", {}).get("top1_agreement")
        print(f"| {name} | {'-' if agree is None else f'{100 * agree:.1f}'} | {_ms(lat['1'])} | {_ms(lat['64'])} | "
              f"{lat['64']['vs_qdq_per_channel']['speedup']:.2f}x |")


def int8() -> None:
    """fp32 vs int8 per network from product runs (int8.json; measured by bench/int8.py)."""
    result = json.loads((RESULTS / "int8.json").read_text())
    print(f"{result['machine']['cpu']}, commit {result['commit']}\n")
    print(result["markdown"])


def throughput() -> None:
    """Training-step cost and the data pipeline (step_time, throughput*, data_pipeline*.json)."""
    steps = json.loads((RESULTS / "step_time.json").read_text())
    print("| ResNet-20 step, batch 256 | median ms |\n|---|---:|")
    for kind, s in steps["steps"].items():
        print(f"| {kind} | {1000 * s['median_s']:.1f} |")
    for name in ("throughput", "throughput-2p"):
        t = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"\n{name} ({t['world_size']} process(es)):\n| model | step | median ms | img/s |\n|---|---|---:|---:|")
        for r in t["rows"]:
            print(f"| {r['arch']} | {r['kind']} | {1000 * r['median_step_s']:.0f} | {r['images_per_s']:.1f} |")
    pipe = json.loads((RESULTS / "data_pipeline.json").read_text())
    print("\n| input px | workers | img/s |\n|---:|---:|---:|")
    for r in pipe["throughput"]:
        print(f"| {r['size']} | {r['workers']} | {r['images_per_s']:.0f} |")
    for name, r in pipe["rss"].items():
        if isinstance(r, dict) and "peak_pss_mib" in r:
            print(f"peak PSS of a streamed compress epoch ({name}): {r['peak_pss_mib']:,.0f} MiB")
    epoch = json.loads((RESULTS / "data_pipeline_epoch.json").read_text())["epoch"]
    for name, r in epoch.items():
        if isinstance(r, dict) and "train_seconds" in r:
            print(f"ResNet-20 epoch, {name}: train {r['train_seconds']:.1f} s, eval {r['eval_seconds']:.1f} s")


TABLES: dict[str, Callable[[], None]] = {"accuracy": accuracy, "floor": floor, "channel": channel,
                                         "transfer": transfer, "precision": precision, "int8": int8,
                                         "throughput": throughput}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="?", choices=sorted(TABLES))
    p.add_argument("--list", action="store_true", help="name every table and what it reads")
    args = p.parse_args(argv)
    if args.list or args.table is None:
        for name, fn in TABLES.items():
            print(f"{name:12} {(fn.__doc__ or '').strip()}")
        return
    TABLES[args.table]()


if __name__ == "__main__":
    sys.exit(main())
