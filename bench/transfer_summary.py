"""The transfer grid's cells -> transfer.json (targets, table rows) and transfer.png (accuracy vs steps)."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

LABELS = {"vpns": "VPNs", "vpns-zero": "VPNs, prompt frozen at 0", "hydra": "HYDRA (Adam scores)",
          "hydra-paper": "HYDRA (paper: SGD 0.01 scores)", "magnitude": "magnitude + FT", "dense": "dense FT"}
TARGETS = {"vpns_minus_hydra_at_0.9": 2.0, "vpns_minus_zero_prompt_at_0.9": 1.0,
           "dense_minus_vpns_at_0.7": -2.0}


def label(method: str) -> str:
    """A grid method's name, or a probe's changed settings (VPNs, lr_prompt_mask=0.008 (probe))."""
    if method in LABELS:
        return LABELS[method]
    from bench.transfer import PROBES

    return "VPNs, " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in PROBES[method].items()) + " (probe)"


def load_cells(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


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
    for (method, sp), group in sorted(groups.items(), key=lambda kv: (-(kv[0][1] or 0), kv[0][0])):
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

    pairs = {"vpns_minus_hydra_at_0.9": (top1("vpns", 0.9), top1("hydra", 0.9)),
             "vpns_minus_zero_prompt_at_0.9": (top1("vpns", 0.9), top1("vpns-zero", 0.9)),
             "dense_minus_vpns_at_0.7": (top1("vpns", 0.7), top1("dense", None))}
    out = {}
    for name, (a, b) in pairs.items():
        margin = None if a is None or b is None else a - b
        out[name] = {"margin_points": margin, "target": TARGETS[name],
                     "met": None if margin is None else margin >= TARGETS[name]}
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


def plot(cells: dict[str, dict], path: Path) -> None:
    """Top-1 after every epoch (validation while training, test at stage ends) vs optimiser steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, c in sorted(cells.items()):
        steps, acc, total = [], [], 0
        for e in c["curve"]:
            total += e["optimizer_steps"]
            value = e.get("test_acc_plain")
            if value is None:
                value = e.get("val_acc_plain")
            if value is not None:
                steps.append(total)
                acc.append(100 * value)
        ax.plot(steps, acc, marker="o", label=key)
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel("top-1 % (un-prompted)")
    ax.set_title("EfficientNet-Lite0 (ImageNet) -> CIFAR-10, label mapping")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_summary(args: argparse.Namespace, command: str) -> dict:
    from pipelines.run_dir import now, versions
    from vpns_deploy.atomic import atomic_write, atomic_write_json

    cells = load_cells(args.out.with_suffix(""))
    table = rows(cells)
    result = {"command": command, "updated": now(), "machine": versions(),
              "budget": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "one"},
              "rows": table, "targets": targets(table), "cells": cells}
    atomic_write_json(args.out, result)
    png = args.out.with_suffix(".png")
    atomic_write(png, lambda tmp: plot(cells, Path(tmp)))
    print(markdown(table))
    print(json.dumps(result["targets"], indent=1))
    return result
