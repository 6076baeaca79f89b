"""The latency target's accuracy side: EfficientNet-Lite0 -> CIFAR-10-JPEG (128 px, 596 optimiser steps;
one 4x cell on three times as many, to measure what the step budget holds back)
compressed to a measured --speedup at batch 1 on ONNX Runtime CPU, VPNs against Torch-Pruning's
group-norm pruner at the same measured speedup and steps, and what ships (channels x precision).

Each cell is one run of bench/recipes/target-transfer.toml, read from its manifest.json (the search: MACs
reduction chosen, the speedup it measured, the re-measurement at the end) and report.json (the graph to
ship, chosen by measurement among fp32 and int8 within the export's tolerance, its speedup over the
dense fp32 graph at batch 1 and 64 on the deployed uint8 graphs, and test top-1 on all 10,000 images).
The dense fine-tune at 596 steps is the transfer table's (bench/results/transfer.json).

    vpns-deploy run bench/recipes/target-transfer.toml   # the runs (resumable; about 30 minutes each)
    python -m bench target-transfer [--partial]          # the table, JSON and PNG from them
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"vpns": "VPNs", "tp-groupnorm": "Torch-Pruning group-norm + fine-tune"}


def dense_finetune(results: Path = ROOT / "bench/results/transfer.json") -> dict:
    """The dense fine-tune at the same split and steps, per seed (the transfer table's runs)."""
    runs = json.loads(results.read_text())["runs"]
    return {r["seed"]: r["top1"] for name, r in runs.items() if name.startswith("dense-")}


def cell(run: Path) -> dict:
    """One run: the search, the re-measurement, what report ships and how fast and accurate it is."""
    from bench.grid import made_by

    m = json.loads((run / "manifest.json").read_text())
    r = json.loads((run / "report.json").read_text())
    t = m["metrics"]["target"]
    lat = t["latency"]
    ship = r["shipping"]
    best = {b: ship["best"][b] for b in ship["best"]}
    speed = {b: ship["candidates"][g]["speedup_vs_dense_fp32"][b] for b, g in best.items()}
    return {"created": m["created"], **made_by(m),
            "method": m["config"]["method"], "seed": m["config"]["seed"], "target": lat["target"],
            "batch": t["batch"], "macs_ratio": lat["macs_ratio"],
            "search": {"speedup": lat["measured"]["speedup"], "ci95": lat["measured"]["ci95"]},
            "verified": {"speedup": lat["verified"]["speedup"], "ci95": lat["verified"]["ci95"]},
            "candidates": [[c["macs_ratio"], c["speedup"]] for c in lat["candidates"]],
            "optimizer_steps": sum(e["optimizer_steps"] for e in m["metrics"]["epochs"]),
            "ships": best, "speedup": speed,
            "top1": {g: c["top1"] for g, c in ship["candidates"].items()},
            "target_met": r["target"]["shipped"]["met"]}


def summarise(records: dict[str, dict]) -> dict:
    dense = dense_finetune()
    lines = ["| run | method | target | MACs reduction | search | re-measured | ships (b1 / b64) | "
             "report b1 [95 %] | report b64 | test top-1 % | vs dense fine-tune | steps |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, c in records.items():
        b1, b64 = c["speedup"]["1"], c["speedup"]["64"]
        top1 = c["top1"][c["ships"][str(c["batch"])]]
        ref = dense.get(c["seed"])
        lines.append(f"| {name} | {METHODS.get(c['method'], c['method'])} | {c['target']:g}x | {c['macs_ratio']:.2f}x | "
                     f"{c['search']['speedup']:.2f}x | {c['verified']['speedup']:.2f}x | {c['ships']['1']} / "
                     f"{c['ships']['64']} | {b1['speedup']:.2f}x [{b1['ci95'][0]:.2f}, {b1['ci95'][1]:.2f}] | "
                     f"{b64['speedup']:.2f}x | {100 * top1:.2f} | "
                     + (f"{100 * (top1 - ref):+.2f} |" if ref is not None else "- |") + f" {c['optimizer_steps']} |")
    return {"dense_finetune": dense, "markdown": {"Latency targets: accuracy": "\n".join(lines)}}


def plot(result: dict, path: Path) -> None:
    """Test top-1 against the shipped graph's measured speedup at batch 1, per run, with the dense fine-tune."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in result["runs"].items():
        x = c["speedup"]["1"]["speedup"]
        y = 100 * c["top1"][c["ships"][str(c["batch"])]]
        ax.plot(x, y, "o" if c["method"] == "vpns" else "s", ms=7, label=name)
    for seed, top1 in result["dense_finetune"].items():
        ax.axhline(100 * top1, color="grey", lw=1, ls="--")
    ax.text(1.02, 100 * max(result["dense_finetune"].values()), "dense fine-tune", fontsize=8, va="bottom")
    ax.set_xlabel("speedup of the graph to ship over dense fp32, batch 1 (ORT CPU, measured)")
    ax.set_ylabel("test top-1 %")
    ax.set_xlim(left=1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("EfficientNet-Lite0 -> CIFAR-10, 128 px (optimiser steps in the table)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from bench import grid

    args = grid.table_args(__doc__, argv)
    return grid.regenerate("target-transfer", summarise, plot, args.recipe, args.out, args.partial, record=cell,
                           needs="report.json")


if __name__ == "__main__":
    main()
