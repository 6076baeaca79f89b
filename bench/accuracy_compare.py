"""Old vs new defaults on a ResNet-20 accuracy grid, cell by cell.

A grid (full CIFAR-10-JPEG train split, VPNs 1 + 1 epochs, equal
optimiser steps) measured under the defaults of its day, beside the same cells re-run under today's
(BN re-estimation on augmented images, a validation split), with magnitude + fine-tune also distilled
(`--distill`, off by default since this comparison measured it at 70 %). New cells may
come from several grids (the floor's 50k x 1 + 1 budget is the same grid at 90 %), so `--new` takes
several files; a cell present in more than one is taken from the first. VPNs rows are the model the
product ships (its validation decision, never the better of plain/prompted on test).

    python -m bench.accuracy_compare --old bench/results/accuracy.json \\
        --new bench/results/floor/50k-e1.json bench/results/accuracy-2026-12-03.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.accuracy_summary import METHOD_LABELS, shipped_top1

ROWS = ("dense", "magnitude", "magnitude_kd", "hydra", "vpns")


def cells_by_key(paths: list[Path]) -> dict[tuple[str, float | None], dict[int, dict]]:
    """(method, sparsity) -> {seed: cell}; the first file holding a cell wins."""
    out: dict[tuple[str, float | None], dict[int, dict]] = {}
    for path in paths:
        for cell in json.loads(path.read_text())["cells"].values():
            out.setdefault((cell["method"], cell["sparsity"]), {}).setdefault(cell["seed"], cell)
    return out


def _mean(cells: dict[int, dict] | None) -> dict | None:
    if not cells:
        return None
    values = [shipped_top1(c) for _, c in sorted(cells.items())]
    return {"top1": statistics.fmean(values), "seeds": sorted(cells), "values": values}


def compare(old: dict, new: dict) -> list[dict]:
    """One row per (sparsity, method): old and new mean top-1 over the seeds each has."""
    sparsities = sorted({sp for _, sp in old | new if sp is not None}, reverse=True)
    rows = [{"sparsity": None, "method": "dense", "old": _mean(old.get(("dense", None))),
             "new": _mean(new.get(("dense", None)))}]
    for sp in sparsities:
        for m in ROWS[1:]:
            row = {"sparsity": sp, "method": m, "old": _mean(old.get((m, sp))), "new": _mean(new.get((m, sp)))}
            if row["old"] or row["new"]:
                rows.append(row)
    return rows


def _fmt(r: dict | None) -> str:
    if not r:
        return "—"
    return f"{100 * r['top1']:.2f}" + (f" (seeds {', '.join(map(str, r['seeds']))})" if len(r["seeds"]) > 1 else "")


def markdown(rows: list[dict]) -> str:
    lines = ["| sparsity | method | old defaults | new defaults | change |", "|---|---|---:|---:|---:|"]
    for r in rows:
        label = METHOD_LABELS.get(r["method"], r["method"])
        change = (f"{100 * (r['new']['top1'] - r['old']['top1']):+.2f}" if r["old"] and r["new"] else "")
        sp = "—" if r["sparsity"] is None else f"{r['sparsity']:g}"
        lines.append(f"| {sp} | {label} | {_fmt(r['old'])} | {_fmt(r['new'])} | {change} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Old and new top-1 side by side, one pair of bars per (sparsity, method): a change of defaults
    that lifted one method and not another shows at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["dense" if r["sparsity"] is None else f"{r['sparsity']:g} {METHOD_LABELS.get(r['method'], r['method'])}"
              for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(rows)), 4.2), dpi=120)
    for shift, key, colour in ((-0.2, "old", "tab:grey"), (0.2, "new", "tab:blue")):
        ax.bar([i + shift for i in x], [100 * r[key]["top1"] if r[key] else 0 for r in rows], width=0.4,
               color=colour, label=f"{key} defaults")
    tops = [100 * r[k]["top1"] for r in rows for k in ("old", "new") if r[k]]
    ax.set_ylim(min(tops) - 2, max(tops) + 1)
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("top-1 % (full test split, mean over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, required=True, help="the grid measured under the old defaults")
    p.add_argument("--new", type=Path, nargs="+", required=True, help="grids measured under today's defaults")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here, and a PNG beside it")
    args = p.parse_args(argv)
    missing = [str(x) for x in [args.old, *args.new] if not x.is_file()]
    if missing:
        sys.exit(f"error: no such results file: {', '.join(missing)}")
    rows = compare(cells_by_key([args.old]), cells_by_key(args.new))
    if args.out:
        from vpns_deploy.atomic import atomic_write_json

        atomic_write_json(args.out, {"command": "python -m bench.accuracy_compare " + " ".join(sys.argv[1:]),
                                     "rows": rows})
        plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
