"""Regenerate one table of the results page (docs/benchmarks.md), by name.

    python -m bench TABLE [--partial] [--out DIR]   # accuracy (and floor), channel, transfer, int8,
                                                    # target, target-transfer, prompt,
                                                    # prompt-budget
    python -m bench TABLE --show                    # print the committed table; reads no runs
    python -m bench precision | throughput | repeat | prompt-cost
                                                    # print a measurement table from its JSON
    python -m bench --list

A grid table is a recipe plus a summariser: `vpns-deploy run bench/recipes/TABLE.toml` makes its runs
(resumable: finished runs are skipped, an interrupted one resumes) and `python -m bench TABLE` reads
their manifest.json / report.json into bench/results/TABLE.json (the runs, the summary, the markdown
table, what measured each run) and TABLE.png. It never trains: where runs are missing it names the
`vpns-deploy run` command that makes them and writes nothing (--partial summarises those present).
Measurement tables (precision, throughput, repeat, prompt-cost) print from their JSON, which holds the command
that measured it.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
GRID_TABLES = {"accuracy": "bench.accuracy", "floor": "bench.accuracy", "channel": "bench.channel",
               "transfer": "bench.transfer", "int8": "bench.int8", "target": "bench.target", "prompt": "bench.prompt",
               "prompt-budget": "bench.prompt_budget", "target-transfer": "bench.target_transfer"}


def _grid(name: str) -> Callable[[list[str]], None]:
    def table(argv: list[str]) -> None:
        import importlib

        if "--show" in argv:
            saved = json.loads((RESULTS / f"{'accuracy' if name == 'floor' else name}.json").read_text())
            for title, md in saved["markdown"].items():
                print(f"\n{title}:\n{md}")
            return
        importlib.import_module(GRID_TABLES[name]).main(argv)

    table.__doc__ = {
        "accuracy": "ResNet-20 unstructured by sparsity and over budgets (recipes/accuracy.toml).",
        "floor": "The same runs and file as accuracy (its over-budgets table).",
        "channel": "ResNet-56 channel mode vs Torch-Pruning at equal steps (recipes/channel.toml).",
        "transfer": "EfficientNet-Lite0 -> CIFAR-10, zero-prompt control, probes (recipes/transfer.toml).",
        "int8": "fp32 vs int8 per network (recipes/int8.toml).",
        "target": "--speedup measured vs the MACs budget per backbone and batch (recipes/target.toml).",
        "prompt": "The learned prompt vs its zero-prompt control, paired by seed (recipes/prompt.toml).",
        "prompt-budget": "The same at 64 px on the full training split (recipes/prompt-budget.toml).",
        "target-transfer": "--speedup measured, accuracy: VPNs vs Torch-Pruning (recipes/target-transfer.toml).",
    }[name]
    return table


def _ms(row: dict) -> str:
    return f"{row['median_ms']:.2f}"


def precision(argv: list[str]) -> None:
    """2:4 ResNet-56 in fp32 / fp16 / int8 (nm.json; measured by python -m bench.nm)."""
    nm = json.loads((RESULTS / "nm.json").read_text())
    print("| graph | top-1 % | ORT b1 ms | ORT b64 ms |\n|---|---:|---:|---:|")
    for name, r in nm["rows"].items():
        print(f"| {name} | {100 * r['top1']:.2f} | {_ms(r['b1'])} | {_ms(r['b64'])} |")


def throughput(argv: list[str]) -> None:
    """Training-step cost and the data pipeline (step_time, throughput, data_pipeline.json)."""
    steps = json.loads((RESULTS / "step_time.json").read_text())
    print("| ResNet-20 step, batch 256 | median ms |\n|---|---:|")
    for kind, s in steps["steps"].items():
        print(f"| {kind} | {1000 * s['median_s']:.1f} |")
    for t in json.loads((RESULTS / "throughput.json").read_text())["runs"]:
        print(f"\n{t['world_size']} process(es):\n| model | step | median ms | img/s |\n|---|---|---:|---:|")
        for r in t["rows"]:
            print(f"| {r['arch']} | {r['kind']} | {1000 * r['median_step_s']:.0f} | {r['images_per_s']:.1f} |")
    pipe = json.loads((RESULTS / "data_pipeline.json").read_text())
    print("\n| input px | workers | img/s |\n|---:|---:|---:|")
    for r in pipe["throughput"]:
        print(f"| {r['size']} | {r['workers']} | {r['images_per_s']:.0f} |")
    for name, r in pipe["rss"].items():
        if isinstance(r, dict) and "peak_pss_mib" in r:
            print(f"peak PSS of a streamed compress epoch ({name}): {r['peak_pss_mib']:,.0f} MiB")
    for name, r in pipe["epoch"].items():
        if isinstance(r, dict) and "train_seconds" in r:
            print(f"ResNet-20 epoch, {name}: train {r['train_seconds']:.1f} s, eval {r['eval_seconds']:.1f} s")


def _measurement(name: str, doc: str) -> Callable[[list[str]], None]:
    """Print a measurement table saved by a bench module (bench/results/NAME.json, with its command)."""
    def table(argv: list[str]) -> None:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"{saved['command']} ({saved['created'][:10]}, {saved['machine']['cpu']}):\n{saved['markdown']}")

    table.__doc__ = f"{doc} ({name}.json; python -m bench.{name})."
    return table


TABLES: dict[str, Callable[[list[str]], None]] = {
    **{name: _grid(name) for name in GRID_TABLES}, "precision": precision, "throughput": throughput,
    "repeat": _measurement("latency_repeat", "One speedup measured again and again vs its interval"),
    "prompt-cost": _measurement("prompt_cost", "The prompt's latency on the shipped graph")}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="?", choices=sorted(TABLES))
    p.add_argument("--list", action="store_true", help="name every table and what it reads")
    args, rest = p.parse_known_args(argv)
    if args.list or args.table is None:
        for name, fn in TABLES.items():
            print(f"{name:12} {(fn.__doc__ or '').strip()}")
        return
    TABLES[args.table](rest)


if __name__ == "__main__":
    sys.exit(main())
