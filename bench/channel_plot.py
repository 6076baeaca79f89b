"""The channel benchmark's picture: top-1 against total optimiser steps, one line per method family.

The question is whether VPNs beats Torch-Pruning at the same *total* steps; a table of cells at 392, 588
and 784 steps hides which family gains more per step, a line per family shows it.
"""
from __future__ import annotations

from pathlib import Path

# cell -> (family label, marker); a family's cells are joined in step order
FAMILIES = {
    "tp": ("Torch-Pruning + fine-tune", "o"), "tp_3e": ("Torch-Pruning + fine-tune", "o"),
    "tp_steps": ("Torch-Pruning + fine-tune", "o"),
    "vpns_half": ("VPNs", "s"), "vpns": ("VPNs", "s"),
    "vpns_tune": ("VPNs, one-batch stage 1 + 2E tune", "*"),
    "tp_steps_kd": ("Torch-Pruning + fine-tune, distilled", "^"), "vpns_kd": ("VPNs, distilled", "D"),
    "vpns_tune_kd": ("VPNs, one-batch stage 1 + 2E tune, distilled", "X"),
    "hydra": ("HYDRA", "v"), "magnitude": ("L1 channels + fine-tune", "x"),
    "vpns_slow": ("VPNs variants", "P"), "vpns_l1init": ("VPNs variants", "P"), "vpns_widths": ("VPNs variants", "P"),
}


def series(results: dict) -> dict[str, list[tuple[int, float, str]]]:
    """Family label -> [(optimiser steps, top-1 %, cell)] sorted by steps."""
    out: dict[str, list[tuple[int, float, str]]] = {}
    for cell, c in results["cells"].items():
        label = FAMILIES.get(cell, (cell, "."))[0]
        out.setdefault(label, []).append((c["optimizer_steps"], 100 * c["top1"], cell))
    return {k: sorted(v) for k, v in out.items()}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, pts in series(results).items():
        marker = FAMILIES.get(pts[0][2], (label, "."))[1]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
        for steps, top1, cell in pts:
            ax.annotate(cell, (steps, top1), textcoords="offset points", xytext=(4, -10), fontsize=6)
    if results.get("dense_top1") is not None:
        ax.axhline(100 * results["dense_top1"], color="grey", ls=":", label="dense, no training")
    steps = [c["optimizer_steps"] for c in results["cells"].values()]
    if steps and max(steps) - min(steps) < 0.1 * max(steps):  # equal-step cells: do not stretch a 0.3 % spread
        ax.set_xlim(0.9 * min(steps), 1.1 * max(steps))
    b = results.get("budget", {})
    ax.set_xlabel("total optimiser steps (VPNs: two per batch)")
    ax.set_ylabel("top-1 % (full test split, model shipped)")
    ax.set_title(f"{b.get('arch', '')} channel mode, {b.get('speedup', '')}x fewer MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
