"""ResNet-56 channel mode against Torch-Pruning at equal total optimiser steps (bench/recipes/channel.toml):
the shipped model's test top-1 per cell, seed and budget, and a picture of top-1 against steps.

    vpns-deploy run bench/recipes/channel.toml      # the runs (bench/runs/channel/NAME; resumable)
    python -m bench channel                         # bench/results/channel.json + .png from them

Variants are named eE-CELL-seedSEED (E: VPNs epochs per stage; CELL: see the recipe's comment).
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path

from bench import grid

NAME = re.compile(r"^e(?P<epochs>\d+)-(?P<cell>[a-z_0-9]+)-seed(?P<seed>\d+)$")
# cell -> (label, family for the picture); the table lists cells in this order
CELLS = {
    "tp_steps": ("Torch-Pruning + fine-tune (`tp_steps`)", "Torch-Pruning + fine-tune"),
    "tp_3e": ("Torch-Pruning + 3E fine-tune (`tp_3e`)", "Torch-Pruning + fine-tune"),
    "vpns": ("VPNs, even split (`vpns`)", "VPNs, even split"),
    "vpns_half": ("VPNs, half of stage 1's batches (`vpns_half`)", "VPNs, even split"),
    "vpns_tune": ("VPNs, one-batch stage 1 (`vpns_tune`, the default split)", "VPNs, one-batch stage 1"),
    "tp_steps_kd": ("Torch-Pruning, distilled (`tp_steps_kd`)", "Torch-Pruning, distilled"),
    "vpns_kd": ("VPNs even split, distilled (`vpns_kd`)", "VPNs, distilled"),
    "vpns_tune_kd": ("VPNs one-batch stage 1, distilled (`vpns_tune_kd`)", "VPNs one-batch stage 1, distilled"),
}


def cell(name: str) -> tuple[int, str, int]:
    """A variant name -> (VPNs epochs per stage, cell, seed)."""
    m = NAME.match(name)
    if m is None or m["cell"] not in CELLS:
        raise SystemExit(f"error: variant {name!r} is not eE-CELL-seedSEED with CELL one of {', '.join(CELLS)}")
    return int(m["epochs"]), m["cell"], int(m["seed"])


def rows(runs: dict[str, dict]) -> list[dict]:
    """One row per (cell, epochs): top-1 per seed and the mean, optimiser steps, MACs and parameters."""
    groups: dict[tuple[str, int], dict[int, dict]] = {}
    for name, r in runs.items():
        epochs, c, seed = cell(name)
        groups.setdefault((c, epochs), {})[seed] = r
    out = []
    for (c, epochs), by_seed in sorted(groups.items(), key=lambda kv: (list(CELLS).index(kv[0][0]), kv[0][1])):
        first = by_seed[min(by_seed)]
        out.append({"cell": c, "label": CELLS[c][0], "epochs": epochs,
                    "top1": {str(s): by_seed[s]["top1"] for s in sorted(by_seed)},
                    "top1_mean": statistics.fmean(r["top1"] for r in by_seed.values()),
                    "optimizer_steps": first["optimizer_steps"], "macs": first.get("macs"), "params": first.get("params")})
    return out


def markdown(table: list[dict]) -> str:
    budgets = sorted({r["epochs"] for r in table})
    seeds = {e: sorted({s for r in table if r["epochs"] == e for s in r["top1"]}, key=int) for e in budgets}
    head, rule = ["cell"], ["---"]
    for e in budgets:
        head += [f"steps ({e} + {e})"] + [f"seed {s}" for s in seeds[e]] + (["mean"] if len(seeds[e]) > 1 else [])
        rule += ["---:"] * (1 + len(seeds[e]) + (len(seeds[e]) > 1))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]
    for c in [c for c in CELLS if any(r["cell"] == c for r in table)]:
        out = [CELLS[c][0]]
        for e in budgets:
            r = next((r for r in table if (r["cell"], r["epochs"]) == (c, e)), None)
            out.append("" if r is None else f"{r['optimizer_steps']:,}")
            out += ["" if r is None or s not in r["top1"] else f"{100 * r['top1'][s]:.2f}" for s in seeds[e]]
            if len(seeds[e]) > 1:
                out.append("" if r is None or len(r["top1"]) < 2 else f"{100 * r['top1_mean']:.2f}")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def summarise(runs: dict[str, dict]) -> dict:
    table = rows(runs)
    dense = [r["dense_top1"] for r in runs.values() if r.get("dense_top1") is not None]
    return {"rows": table, "dense_top1": dense[0] if dense else None, "markdown": {"channel": markdown(table)}}


def plot(result: dict, path: Path) -> None:
    """Top-1 (mean over seeds) against total optimiser steps, one line per family: which family gains
    more per step shows where a table of cells at 704 and 1,408 steps hides it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    families: dict[str, list[tuple[int, float, str]]] = {}
    for r in result["rows"]:
        families.setdefault(CELLS[r["cell"]][1], []).append((r["optimizer_steps"], 100 * r["top1_mean"], r["cell"]))
    for i, (family, pts) in enumerate(families.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="osD^vxP*"[i % 8], label=family)
        for steps, top1, c in pts:
            ax.annotate(c, (steps, top1), textcoords="offset points", xytext=(4, -10), fontsize=6)
    if result.get("dense_top1") is not None:
        ax.axhline(100 * result["dense_top1"], color="grey", ls=":", label="dense as delivered")
    ax.set_xlabel("total optimiser steps (VPNs: two per batch)")
    ax.set_ylabel("test top-1 % (shipped model, mean over seeds)")
    ax.set_title("ResNet-56 channel mode, 2x fewer MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = grid.table_args(__doc__, argv)
    return grid.regenerate("channel", summarise, plot, args.recipe, args.out, args.partial)


if __name__ == "__main__":
    main()
