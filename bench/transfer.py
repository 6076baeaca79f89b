"""EfficientNet-Lite0 (ImageNet) -> CIFAR-10 with the zero-prompt control (bench/recipes/transfer.toml):
the shipped model's test top-1 per method, sparsity and seed, the margins the paper claims, and the
probes (one setting of the seed-7 VPNs run at 90 % changed).

    vpns-deploy run bench/recipes/transfer.toml     # the runs (bench/runs/transfer/NAME; resumable)
    python -m bench transfer                        # bench/results/transfer.json + .png from them

Variants are named METHOD[-PROBE][-sSPARSITY]-seedSEED (dense has no sparsity).
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path

from bench import grid

NAME = re.compile(r"^(?P<method>[a-z][a-z0-9.\-]*?)(-s(?P<sparsity>0\.\d+))?-seed(?P<seed>\d+)$")
LABELS = {"vpns": "VPNs", "vpns-zero": "VPNs, prompt frozen at 0", "hydra": "HYDRA (Adam scores)",
          "hydra-paper": "HYDRA (paper: SGD 0.01 on the scores)", "magnitude": "magnitude + fine-tune",
          "dense": "dense fine-tune"}
PROBES = {"vpns-plr0.001": "stage-1 prompt lr 1e-3 (default 1e-4)", "vpns-plr0.008": "stage-1 prompt lr 8e-3",
          "vpns-pmask": "prompt trained in stage 1 only", "vpns-ptune": "prompt trained in stage 2 only",
          "vpns-pad18": "an 18-px prompt frame (default 9)", "vpns-160px": "VPNs at 160 px",
          "vpns-zero-160px": "VPNs, prompt frozen at 0, at 160 px"}
SPARSITIES = (0.9, 0.7)
# margin -> (method counted, method subtracted, sparsity, target in points or None): over the seeds both ran
MARGINS = {
    "VPNs - zero prompt at 0.9": ("vpns", "vpns-zero", 0.9, 1.0),
    "VPNs - zero prompt at 0.7": ("vpns", "vpns-zero", 0.7, 1.0),
    "VPNs - HYDRA (Adam scores) at 0.9": ("vpns", "hydra", 0.9, None),
    "VPNs - HYDRA (Adam scores) at 0.7": ("vpns", "hydra", 0.7, None),
    "VPNs - HYDRA (paper) at 0.9": ("vpns", "hydra-paper", 0.9, None),
    "dense - VPNs at 0.7": ("dense", "vpns", 0.7, None),
}


def cell(name: str) -> tuple[str, float | None, int]:
    """A variant name -> (method or probe, sparsity or None for dense, seed)."""
    m = NAME.match(name)
    if m is None or m["method"] not in LABELS | PROBES:
        raise SystemExit(f"error: variant {name!r} is not METHOD[-PROBE][-sSPARSITY]-seedSEED (see bench/transfer.py)")
    return m["method"], None if m["sparsity"] is None else float(m["sparsity"]), int(m["seed"])


def by_cell(runs: dict[str, dict]) -> dict[tuple[str, float | None], dict[int, float]]:
    """(method, sparsity) -> {seed: shipped top-1}."""
    out: dict[tuple[str, float | None], dict[int, float]] = {}
    for name, r in runs.items():
        method, sp, seed = cell(name)
        out.setdefault((method, sp), {})[seed] = r["top1"]
    return out


def margins(cells: dict) -> dict[str, dict]:
    """Margins in points between shipped models, over the seeds both cells ran."""
    out = {}
    for name, (a, b, sp, target) in MARGINS.items():
        ca, cb = cells.get((a, None if a == "dense" else sp), {}), cells.get((b, None if b == "dense" else sp), {})
        seeds = sorted(set(ca) & set(cb))
        margin = (100 * statistics.fmean(ca[s] for s in seeds) - 100 * statistics.fmean(cb[s] for s in seeds)
                  if seeds else None)
        out[name] = {"points": margin, "seeds": seeds, "target": target,
                     "met": None if margin is None or target is None else margin >= target}
    return out


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def markdown(cells: dict, runs: dict[str, dict], margin: dict[str, dict]) -> dict[str, str]:
    seeds = sorted({s for (m, _), c in cells.items() if m in LABELS for s in c})
    head = " | ".join(f"{sp:g}, seed {s}" for sp in SPARSITIES for s in [*seeds, "mean"]).replace("seed mean", "mean")
    lines = [f"| method | {head} |", "|---|" + "---:|" * (len(SPARSITIES) * (len(seeds) + 1))]
    for method, label in LABELS.items():
        out = []
        for sp in SPARSITIES:
            c = cells.get((method, None if method == "dense" else sp), {}) if method != "dense" or sp == 0.9 else {}
            out += [_pct(c.get(s)) for s in seeds] + [_pct(statistics.fmean(c.values())) if len(c) > 1 else ""]
        if any(out):
            lines.append(f"| {label} | " + " | ".join(out) + " |")
    mlines = ["| margin (shipped models, points) | seeds | measured | target |", "|---|---|---:|---:|"]
    for name, m in margin.items():
        if m["points"] is not None:
            target = "" if m["target"] is None else f"{m['target']:+g}"
            mlines.append(f"| {name} | {', '.join(map(str, m['seeds']))} | {m['points']:+.2f} | "
                          f"{target} |")
    plines = ["| probe (VPNs, 0.9, seed 7, one setting changed) | top-1 % shipped | plain | prompted |",
              "|---|---:|---:|---:|"]
    for name, r in runs.items():
        method, _, _ = cell(name)
        if method in PROBES:
            plines.append(f"| {PROBES[method]} | {_pct(r['top1'])} | {_pct(r['top1_plain'])} | "
                          f"{_pct(r.get('top1_prompted'))} |")
    return {"transfer": "\n".join(lines), "margins": "\n".join(mlines), "probes": "\n".join(plines)}


def summarise(runs: dict[str, dict]) -> dict:
    cells = by_cell(runs)
    margin = margins(cells)
    table = [{"method": m, "sparsity": sp, "top1": {str(s): v for s, v in sorted(c.items())},
              "top1_mean": statistics.fmean(c.values())} for (m, sp), c in cells.items()]
    return {"rows": table, "margins": margin, "markdown": markdown(cells, runs, margin)}


def plot(result: dict, path: Path) -> None:
    """Left: the shipped model's test top-1 per cell (a dot per seed, a bar at the mean). Right: validation
    top-1 after every epoch against optimiser steps, one line per run (probes grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {m: f"C{i}" for i, m in enumerate(LABELS)}
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    rows = result["rows"]
    for i, r in enumerate(rows):
        colour = colours.get(r["method"], "tab:gray")
        bars.barh(i, 100 * r["top1_mean"], color=colour, alpha=0.35)
        bars.plot([100 * v for v in r["top1"].values()], [i] * len(r["top1"]), "o", color=colour)
        bars.text(100 * max(r["top1"].values()) + 0.15, i, f"{100 * r['top1_mean']:.2f}", va="center", fontsize=8)
    bars.set_yticks(range(len(rows)), [f"{LABELS.get(r['method'], PROBES.get(r['method']))}"
                                       + ("" if r["sparsity"] is None else f" @ {r['sparsity']:g}") for r in rows],
                   fontsize=7)
    bars.invert_yaxis()
    tops = [100 * r["top1_mean"] for r in rows]
    bars.set_xlim(min(tops) - 2, max(tops) + 1.5)
    bars.set_xlabel("test top-1 % of the shipped model (full test split, last epoch)")
    bars.grid(axis="x", alpha=0.3)
    for name, r in result["runs"].items():
        method, sp, seed = cell(name)
        if r.get("val_curve"):
            curves.plot([p[0] for p in r["val_curve"]], [100 * p[1] for p in r["val_curve"]],
                        marker="s" if seed == 9 else "o", markersize=3, color=colours.get(method, "tab:gray"),
                        linestyle="-" if sp in (None, 0.9) else "--", linewidth=1.5 if method in LABELS else 0.8,
                        label=name)
    curves.set_xlabel("optimiser steps")
    curves.set_ylabel("validation top-1 % (un-prompted)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=6, ncol=2)
    fig.suptitle("EfficientNet-Lite0 (ImageNet) -> CIFAR-10, label mapping, equal optimiser steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = grid.table_args(__doc__, argv)
    return grid.regenerate("transfer", summarise, plot, args.recipe, args.out, args.partial)


if __name__ == "__main__":
    main()
