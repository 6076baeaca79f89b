"""Latency targets per backbone: what `--speedup S` (measured, --budget-by latency) reaches on ONNX
Runtime CPU at 224 px, against what the same S as a MACs budget (--budget-by macs) runs at.

Each cell is one compress run (bench/recipes/target.toml; magnitude channel masks, no training: latency
depends on the widths, not the weights), read from its manifest.json: the search's candidates (the first
is the MACs budget itself, S x fewer MACs, timed), the budget chosen, and the check that compacts,
exports and times the chosen network again at the end (not from the cache).

    python -m bench target                       # writes the random-init models if missing, then the table
    vpns-deploy run bench/recipes/target.toml    # the runs it reads (about 10 minutes on 2 cores)
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "bench/runs/target"
NETWORKS = {"resnet50": "ResNet-50", "mobilenetv3l": "MobileNetV3-Large", "lite0": "EfficientNet-Lite0"}
RANDOM_INIT = {"resnet50": "resnet50", "mobilenet_v3_large": "mobilenet_v3_large"}  # torchvision, seed 0
ACHIEVED_WITHIN = 0.10  # the benchmark's bar: the re-measured speedup within 10 % of the request


def ensure_models(folder: Path = RUNS / "models") -> None:
    """Random-init torchvision weights (seed 0) for the latency-only cells, written once."""
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / f"{name}.pt").is_file() for name in RANDOM_INIT):
        return
    torch.manual_seed(0)  # once, then each network in order: the files are reproducible as a set
    for name, builder in RANDOM_INIT.items():
        torch.save(getattr(torchvision.models, builder)().state_dict(), folder / f"{name}.pt")


def cell(run: Path) -> dict:
    """One run's latency target: asked, what the MACs budget alone gave, chosen, re-measured."""
    from bench.grid import made_by

    m = json.loads((run / "manifest.json").read_text())
    t = m["metrics"]["target"]
    lat = t["latency"]
    first, chosen, check = lat["candidates"][0], lat["measured"], lat["verified"]
    net = run.name.rsplit("-", 2)[0]
    return {"created": m["created"], **made_by(m),
            "network": NETWORKS.get(net, net), "target": lat["target"], "batch": t["batch"],
            "macs_budget": {"macs_ratio": first["macs_ratio"], "speedup": first["speedup"], "ci95": first["ci95"]},
            "latency_budget": {"macs_ratio": lat["macs_ratio"], "speedup": chosen["speedup"], "ci95": chosen["ci95"],
                               "met": lat["met"], "reachable": lat["reachable"]},
            "check": {"speedup": check["speedup"], "ci95": check["ci95"],
                      "within": abs(check["speedup"] / lat["target"] - 1) <= ACHIEVED_WITHIN},
            "candidates": [[c["macs_ratio"], c["speedup"]] for c in lat["candidates"]],
            "dense_ms": first["dense_ms"], "search_seconds": lat.get("seconds"),
            "macs": m["metrics"]["structure"]["macs"]}


def summarise(records: dict[str, dict]) -> dict:
    from calibration.cpu import cpu_facts
    from calibration.session import cpu_threads

    facts = cpu_facts()
    order = list(NETWORKS.values())
    cells = sorted(records.values(), key=lambda c: (order.index(c["network"]) if c["network"] in order else len(order),
                                                   c["batch"], c["target"]))
    lines = ["| network | batch | target | MACs budget: MACs / measured | latency budget: MACs / measured | "
             "re-measured [95 %] | within 10 % | candidates | dense ms |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for c in cells:
        mb, lb, ch = c["macs_budget"], c["latency_budget"], c["check"]
        lines.append(f"| {c['network']} | {c['batch']} | {c['target']:g}x | {mb['macs_ratio']:.2f}x / {mb['speedup']:.2f}x | "
                     f"{lb['macs_ratio']:.2f}x / {lb['speedup']:.2f}x | {ch['speedup']:.2f}x [{ch['ci95'][0]:.2f}, "
                     f"{ch['ci95'][1]:.2f}] | {'yes' if ch['within'] else 'no'} | {len(c['candidates'])} | "
                     f"{c['dense_ms']:.1f} |")
    return {"machine": f"{facts.description}, {cpu_threads()} cores",
            "runtime": "ONNX Runtime CPU, fp32, network-only graphs, 224 px",
            "markdown": {"Latency targets": "\n".join(lines)}}


def plot(result: dict, path: Path) -> None:
    """Measured speedup against MACs reduction, every candidate timed: how far MACs predict latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(result["runs"].values())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, batch in zip(axes, (1, 32)):
        for name in NETWORKS.values():
            pts = sorted(p for c in cells if c["network"] == name and c["batch"] == batch for p in c["candidates"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name, ms=4)
        top = max([4.5] + [p[0] for c in cells for p in c["candidates"]])
        ax.plot([1, top], [1, top], color="grey", lw=1, ls="--", label="speedup = MACs reduction")
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("MACs reduction (channel mode)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("measured speedup, ONNX Runtime CPU fp32")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MACs vs measured latency at 224 px ({result['machine']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from bench import grid

    args = grid.table_args(__doc__, argv)
    ensure_models()  # the recipe's inputs (not a run): `vpns-deploy run bench/recipes/target.toml` needs them
    return grid.regenerate("target", summarise, plot, args.recipe, args.out, args.partial, record=cell)


if __name__ == "__main__":
    main()
