"""The transfer grid's cells -> transfer.json (targets, table rows) and transfer.png (accuracy vs steps)."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

LABELS = {"vpns": "VPNs", "vpns-zero": "VPNs, prompt frozen at 0", "hydra": "HYDRA (Adam scores)",
          "hydra-paper": "HYDRA (paper: SGD 0.01 scores)", "magnitude": "magnitude + FT", "dense": "dense FT"}
# margin -> ((method, sparsity) counted, (method, sparsity) subtracted, target: the margin in points must be
# >= it; None: reported for context, with no target). The first three are the targets.
MARGINS = {
    "vpns_minus_hydra_at_0.9": (("vpns", 0.9), ("hydra", 0.9), 2.0),
    "vpns_minus_zero_prompt_at_0.9": (("vpns", 0.9), ("vpns-zero", 0.9), 1.0),
    "dense_minus_vpns_at_0.7": (("vpns", 0.7), ("dense", None), -2.0),
    "vpns_minus_zero_prompt_at_0.7": (("vpns", 0.7), ("vpns-zero", 0.7), None),
    "vpns_minus_hydra_at_0.7": (("vpns", 0.7), ("hydra", 0.7), None),
}


def label(method: str) -> str:
    """A grid method's name, or a probe's changed settings (VPNs, lr_prompt_mask=0.008 (probe))."""
    if method in LABELS:
        return LABELS[method]
    from bench.transfer import PROBES

    return "VPNs, " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in PROBES[method].items()) + " (probe)"


def shipped(cell: dict) -> float:
    """Test top-1 of the model the product ships: prompted only where validation decided to fold the
    prompt in (the cell's prompt_decision), never the better of the two on test."""
    fold = (cell.get("prompt_decision") or {}).get("fold") and cell.get("top1_prompted") is not None
    return cell["top1_prompted"] if fold else cell["top1_plain"]


def _mean(cells: list[dict], key: str) -> float | None:
    values = [c[key] for c in cells if c.get(key) is not None]
    return statistics.fmean(values) if values else None


def rows(cells: dict[str, dict]) -> list[dict]:
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for c in cells.values():
        groups.setdefault((c["method"], c["sparsity"]), []).append(c)
    out = []
    order = list(LABELS)  # grid methods in the grid's order, probes after them, 0.9 before 0.7 before dense

    def rank(kv: tuple[tuple[str, float | None], list[dict]]) -> tuple:
        (method, sp), _ = kv
        return (sp is None, -(sp or 0), order.index(method) if method in order else len(order), method)

    for (method, sp), group in sorted(groups.items(), key=rank):
        plain = [c["top1_plain"] for c in group]
        out.append({
            "method": method, "label": label(method), "sparsity": sp, "seeds": [c["seed"] for c in group],
            "top1_plain_mean": statistics.fmean(plain),
            "top1_plain_std": statistics.pstdev(plain) if len(plain) > 1 else 0.0,
            "top1_prompted_mean": _mean(group, "top1_prompted"),
            "top1_shipped_mean": statistics.fmean(shipped(c) for c in group),
            "optimizer_steps": group[0]["optimizer_steps"],
            "train_seconds_mean": _mean(group, "train_seconds"),
        })
    return out


def targets(table: list[dict]) -> dict[str, dict]:
    """Margins in points between the shipped models (prompt or not as validation decided); a target is
    'not measured' until both of its cells exist."""
    def top1(method: str, sp: float | None) -> float | None:
        row = next((r for r in table if r["method"] == method and r["sparsity"] == sp), None)
        return None if row is None else 100 * row["top1_shipped_mean"]

    out = {}
    for name, (counted, subtracted, target) in MARGINS.items():
        a, b = top1(*counted), top1(*subtracted)
        margin = None if a is None or b is None else a - b
        out[name] = {"margin_points": margin, "target": target,
                     "met": None if margin is None or target is None else margin >= target}
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| method | sparsity | seeds | top-1 plain % | top-1 prompted % | shipped % | optimiser steps | train s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in table:
        prompted = "" if r["top1_prompted_mean"] is None else f"{100 * r['top1_prompted_mean']:.2f}"
        spread = f" ± {100 * r['top1_plain_std']:.2f}" if len(r["seeds"]) > 1 else ""
        sp = "-" if r["sparsity"] is None else f"{r['sparsity']:g}"
        lines.append(f"| {r['label']} | {sp} | {','.join(map(str, r['seeds']))} | "
                     f"{100 * r['top1_plain_mean']:.2f}{spread} | {prompted} | {100 * r['top1_shipped_mean']:.2f} | "
                     f"{r['optimizer_steps']} | "
                     f"{r['train_seconds_mean']:.0f} |")
    return "\n".join(lines)


COLOURS = {"vpns": "tab:blue", "vpns-zero": "tab:cyan", "hydra": "tab:red", "hydra-paper": "tab:pink",
           "magnitude": "tab:green", "dense": "black"}
PROBE_COLOUR = "tab:gray"


def _style(method: str, sp: float | None) -> dict:
    """One colour per method (probes grey), solid at 0.9, dashed at 0.7, dotted for the dense run."""
    return {"color": COLOURS.get(method, PROBE_COLOUR),
            "linestyle": ":" if sp is None else "-" if sp >= 0.85 else "--"}


def _row_name(row: dict) -> str:
    return row["label"] if row["sparsity"] is None else f"{row['label']} @ {row['sparsity']:g}"


def plot(cells: dict[str, dict], table: list[dict], path: Path, title: str) -> None:
    """Left: test top-1 of the shipped model per row of `table` (what a user gets; a dot per seed, a bar at
    the mean). Right: validation top-1 after every epoch vs optimiser steps (the same split at every
    point; test is only measured at stage ends); a circle marks seed 7, a square seed 9."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    for i, r in enumerate(table):
        style = _style(r["method"], r["sparsity"])
        bars.barh(i, 100 * r["top1_shipped_mean"], color=style["color"], alpha=0.35)
        seeds = [c for c in cells.values() if c["method"] == r["method"] and c["sparsity"] == r["sparsity"]]
        bars.plot([100 * shipped(c) for c in seeds], [i] * len(seeds), "o", color=style["color"])
        right = max([100 * r["top1_shipped_mean"]] + [100 * shipped(c) for c in seeds])
        bars.text(right + 0.15, i, f"{100 * r['top1_shipped_mean']:.2f}", va="center", fontsize=8)
    bars.set_yticks(range(len(table)), [_row_name(r) for r in table], fontsize=7)
    bars.invert_yaxis()
    low = min((100 * r["top1_shipped_mean"] for r in table), default=0.0)
    high = max((100 * r["top1_shipped_mean"] for r in table), default=100.0)
    bars.set_xlim(low - 2, high + 1.5)
    bars.set_xlabel("test top-1 % of the shipped model (full test split, last epoch)")
    bars.grid(axis="x", alpha=0.3)
    for key, c in sorted(cells.items()):
        steps, acc, total = [], [], 0
        for e in c["curve"]:
            total += e["optimizer_steps"]
            if e.get("val_acc_plain") is not None:
                steps.append(total)
                acc.append(100 * e["val_acc_plain"])
        probe = c["method"] not in COLOURS
        curves.plot(steps, acc, marker="s" if c["seed"] == 9 else "o", markersize=3,
                    linewidth=0.8 if probe else 1.5, label=key, **_style(c["method"], c["sparsity"]))
    curves.set_xlabel("optimiser steps")
    curves.set_ylabel("validation top-1 % (un-prompted)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_summary(args: argparse.Namespace, command: str, cells: dict[str, dict], measured: bool = True) -> dict:
    """Rows, targets, JSON and PNG from `cells`. The record of what measured them (command, machine,
    budget, time) changes only when this process `measured` a cell: a redraw keeps the measuring one's."""
    from pipelines.run_dir import now, versions
    from vpns_deploy.atomic import atomic_write, atomic_write_json

    table = rows(cells)
    record = {"command": command, "updated": now(), "machine": versions(),
              "budget": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "one"}}
    if not measured and args.out.is_file():
        old = json.loads(args.out.read_text())
        record = {k: old.get(k, v) for k, v in record.items()}
    result = {**record, "rows": table, "targets": targets(table), "cells": dict(sorted(cells.items()))}
    atomic_write_json(args.out, result)
    png = args.out.with_suffix(".png")
    title = f"EfficientNet-Lite0 (ImageNet) -> CIFAR-10 at {args.input_size} px, label mapping"
    atomic_write(png, lambda tmp: plot(cells, table, Path(tmp), title))
    print(markdown(table))
    print(json.dumps(result["targets"], indent=1))
    return result
