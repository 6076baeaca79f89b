"""ResNet-20 unstructured at equal optimiser steps (bench/recipes/accuracy.toml): top-1 by sparsity at the
full training split, and at 90 % over training budgets with and without distillation (the floor: is VPNs
at least as good as magnitude + fine-tune and HYDRA?). One JSON and one PNG for both tables.

    vpns-deploy run bench/recipes/accuracy.toml     # the runs (bench/runs/accuracy/NAME; resumable)
    python -m bench accuracy                        # bench/results/accuracy.json + .png from them

Variants are named BUDGET-METHOD[-sSPARSITY]-seedSEED (BUDGET: training images - VPNs epochs per stage,
e.g. 10k-e3; METHOD: dense, magnitude, hydra, vpns, each optionally _kd for distilled).
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path

from bench import grid

NAME = re.compile(r"^(?P<budget>\d+k-e\d+)-(?P<method>[a-z_]+?)(-s(?P<sparsity>[\d.]+))?-seed(?P<seed>\d+)$")
BUDGETS = ("2k-e1", "2k-e3", "10k-e1", "10k-e3", "50k-e1", "50k-e3")
FULL = "50k-e1"  # the budget of the by-sparsity table
METHODS = ("dense", "magnitude", "hydra", "vpns", "magnitude_kd", "hydra_kd", "vpns_kd")
LABELS = {"dense": "dense FT", "magnitude": "magnitude + FT", "hydra": "HYDRA (Adam scores)", "vpns": "VPNs",
          "magnitude_kd": "magnitude + FT, distilled", "hydra_kd": "HYDRA, distilled", "vpns_kd": "VPNs, distilled"}


def cell(name: str) -> tuple[str, str, float | None, int]:
    """A variant name -> (budget, method, sparsity or None for dense, seed)."""
    m = NAME.match(name)
    if m is None or m["method"] not in METHODS:
        raise SystemExit(f"error: variant {name!r} is not BUDGET-METHOD[-sSPARSITY]-seedSEED (see bench/accuracy.py)")
    return m["budget"], m["method"], None if m["sparsity"] is None else float(m["sparsity"]), int(m["seed"])


def rows(runs: dict[str, dict]) -> list[dict]:
    """One row per (budget, method, sparsity): the shipped model's test top-1, mean over its seeds."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for name, r in runs.items():
        budget, method, sp, seed = cell(name)
        groups.setdefault((budget, method, sp), []).append((seed, r))
    order = {b: i for i, b in enumerate(BUDGETS)}
    out = []
    for (budget, method, sp), seeded in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], len(order)), -(kv[0][2] or 1.0), METHODS.index(kv[0][1]))):
        seeded.sort(key=lambda sr: sr[0])
        values = [r["top1"] for _, r in seeded]
        out.append({"budget": budget, "method": method, "sparsity": sp, "seeds": [s for s, _ in seeded],
                    "top1": values, "top1_mean": statistics.fmean(values),
                    "optimizer_steps": seeded[0][1]["optimizer_steps"]})
    return out


def _pick(table: list[dict], budget: str, method: str, sp: float | None) -> dict | None:
    return next((r for r in table if (r["budget"], r["method"], r["sparsity"]) == (budget, method, sp)), None)


def _pct(row: dict | None) -> str:
    return "—" if row is None else f"{100 * row['top1_mean']:.2f}"


def floor(table: list[dict]) -> dict[str, dict]:
    """Per budget at 90 %: every method's top-1 and whether VPNs >= magnitude + FT and HYDRA (plain and
    distilled), where all three ran."""
    out = {}
    for budget in [b for b in BUDGETS if any(r["budget"] == b for r in table)]:
        row = {m: _pick(table, budget, m, None if m == "dense" else 0.9) for m in METHODS}
        verdict = {}
        for kd in ("", "_kd"):
            v, mag, hyd = row[f"vpns{kd}"], row[f"magnitude{kd}"], row[f"hydra{kd}"]
            verdict[f"met{kd}"] = (None if not (v and mag and hyd)
                                   else v["top1_mean"] >= max(mag["top1_mean"], hyd["top1_mean"]))
        steps = next(r["optimizer_steps"] for r in row.values() if r)
        out[budget] = {"steps": steps, **{m: r and r["top1_mean"] for m, r in row.items()}, **verdict}
    return out


def markdown_by_sparsity(table: list[dict]) -> str:
    cols = ("vpns", "hydra", "magnitude", "magnitude_kd")
    lines = ["| sparsity | " + " | ".join(LABELS[m] for m in cols) + " | seeds |", "|---:|" + "---:|" * len(cols) + "---|"]
    for sp in sorted({r["sparsity"] for r in table if r["budget"] == FULL and r["sparsity"]}, reverse=True):
        picked = [_pick(table, FULL, m, sp) for m in cols]
        seeds = sorted({s for r in picked if r for s in r["seeds"]})
        lines.append(f"| {sp:g} | " + " | ".join(_pct(r) for r in picked) + f" | {', '.join(map(str, seeds))} |")
    dense = _pick(table, FULL, "dense", None)
    if dense:
        lines.append(f"| dense fine-tune | {_pct(dense)} |" + " |" * (len(cols) - 1) +
                     f" {', '.join(map(str, dense['seeds']))} |")
    return "\n".join(lines)


def markdown_floor(by_budget: dict[str, dict]) -> str:
    verdict = {True: "met", False: "**not met**", None: "—"}
    lines = ["| budget (steps) | dense FT | magnitude + FT | HYDRA | VPNs | floor | magnitude KD | HYDRA KD | VPNs KD "
             "| floor (KD) |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for budget, row in by_budget.items():
        pct = {m: "—" if row[m] is None else f"{100 * row[m]:.2f}" for m in METHODS}
        lines.append(f"| {budget} ({row['steps']}) | " + " | ".join(pct[m] for m in METHODS[:4])
                     + f" | {verdict[row['met']]} | " + " | ".join(pct[m] for m in METHODS[4:])
                     + f" | {verdict[row['met_kd']]} |")
    return "\n".join(lines)


def summarise(runs: dict[str, dict]) -> dict:
    table = rows(runs)
    by_budget = floor(table)
    return {"rows": table, "floor": by_budget,
            "markdown": {"accuracy": markdown_by_sparsity(table), "floor": markdown_floor(by_budget)}}


def plot(result: dict, path: Path) -> None:
    """Left: top-1 by sparsity at the full split. Right: top-1 at 90 % against optimiser steps, one line
    per method over the budgets (one line for each training-set size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["rows"]
    fig, (by_sp, by_steps) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for method in METHODS[1:]:
        pts = sorted((r["sparsity"], r["top1_mean"]) for r in table if r["budget"] == FULL and r["method"] == method)
        if len(pts) > 1:
            by_sp.plot([100 * s for s, _ in pts], [100 * t for _, t in pts], "-o", label=LABELS[method])
    dense = _pick(table, FULL, "dense", None)
    if dense:
        by_sp.axhline(100 * dense["top1_mean"], color="grey", ls=":", label="dense fine-tune")
    by_sp.set_xlabel("sparsity % (full training split, VPNs 1 + 1 epochs)")
    by_sp.set_ylabel("test top-1 % of the shipped model")
    for method in METHODS:
        for size in ("2k", "10k", "50k"):
            pts = sorted((r["optimizer_steps"], r["top1_mean"]) for r in table
                         if r["budget"].startswith(size + "-") and r["method"] == method and r["sparsity"] in (None, 0.9))
            if pts:
                by_steps.plot([s for s, _ in pts], [100 * t for _, t in pts], marker="o", markersize=3,
                              color=f"C{METHODS.index(method)}", label=LABELS[method] if size == "2k" else None,
                              ls="--" if method.endswith("_kd") else "-")
    by_steps.set_xscale("log")
    by_steps.set_xlabel("optimiser steps (2k, 10k, 50k images x 1 + 1 and 3 + 3 VPNs epochs)")
    by_steps.set_ylabel("test top-1 % at 90 % sparsity")
    for ax in (by_sp, by_steps):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a grid of one budget draws nothing by sparsity
            ax.legend(fontsize=7)
    fig.suptitle("ResNet-20, CIFAR-10-JPEG, equal optimiser steps per method", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None, table: str = "accuracy") -> dict:
    args = grid.table_args(__doc__, argv)
    return grid.regenerate(table, summarise, plot, args.recipe, args.out, args.partial)


if __name__ == "__main__":
    main()
