"""The accuracy floor over budgets: ResNet-20 at 90 % on CIFAR-10-JPEG, VPNs vs HYDRA vs
magnitude + fine-tune vs the dense fine-tune, at equal optimiser steps, for training subsets of
2k / 10k / 50k images x 1 + 1 and 3 + 3 VPNs epochs (one seed; seeds 7 and 9 at 50k).

Each budget is one `bench.accuracy` grid in its own child process (resumable: finished cells are
kept), written to bench/results/floor/<budget>.json; then one table and plot over all budgets:

    python -m bench.floor            # the whole grid, cheapest budgets first
    python -m bench.floor --only 2k-e1,10k-e1
    python -m bench.floor --methods dense,magnitude,hydra,vpns,vpns_kd   # with distilled VPNs
    python -m bench.floor --only none --compare bench/results/floor/bn-unaugmented-2026-11-25  # the table
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.accuracy_summary import shipped_top1

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared/models/cifar10/resnet20-12fca82f.th"
DATA = f"tar:{ROOT.parent / 'shared/data/cifar10-jpeg.tar.gz'}"
# (key, train subset or None for all 50k, VPNs epochs per stage, seeds)
BUDGETS = (("2k-e1", 2000, 1, "7"), ("2k-e3", 2000, 3, "7"), ("10k-e1", 10000, 1, "7"),
           ("10k-e3", 10000, 3, "7"), ("50k-e1", None, 1, "7,9"), ("50k-e3", None, 3, "7,9"))
METHODS = ("dense", "magnitude", "hydra", "vpns", "magnitude_kd", "hydra_kd", "vpns_kd")  # _kd: --distill


def budget_argv(key: str, subset: int | None, epochs: int, seeds: str, out: Path, methods: str = ",".join(METHODS),
                runs: Path = ROOT / "bench/runs/floor") -> list[str]:
    argv = ["--model", str(MODEL), "--arch", "cifar_resnet20", "--data", DATA, "--methods", methods,
            "--sparsities", "0.9", "--seeds", seeds, "--extra-seeds", "", "--epochs", str(epochs),
            "--lr-scores", "auto", "--out", str(out / f"{key}.json"), "--runs", str(runs / key)]
    return argv + (["--train-subset", str(subset)] if subset else [])


def summary(out: Path) -> dict:
    """Per budget: each method's top-1 (mean over seeds) and whether VPNs >= every baseline."""
    rows = {}
    for key, *_ in BUDGETS:
        path = out / f"{key}.json"
        if not path.is_file():
            continue
        cells = json.loads(path.read_text())["cells"].values()
        row: dict = {}
        for m in METHODS:
            accs = [shipped_top1(c) for c in cells if c["method"] == m]
            steps = [c["optimizer_steps"] for c in cells if c["method"] == m]
            row[m] = {"top1": sum(accs) / len(accs), "n": len(accs), "steps": steps[0]} if accs else None
        for kd in ("", "_kd"):  # the floor without and with distillation, where all three ran
            if row[f"vpns{kd}"] and row[f"magnitude{kd}"] and row[f"hydra{kd}"]:
                row[f"vpns{kd}_floor_met"] = row[f"vpns{kd}"]["top1"] >= max(row[f"magnitude{kd}"]["top1"],
                                                                             row[f"hydra{kd}"]["top1"])
        row["distill_gain"] = {m: row[f"{m}_kd"]["top1"] - row[m]["top1"] for m in ("magnitude", "hydra", "vpns")
                               if row[m] and row[f"{m}_kd"]}
        rows[key] = row
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated budget keys (default: all, cheapest first)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/floor")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (bench.accuracy's names)")
    p.add_argument("--runs", type=Path, default=ROOT / "bench/runs/floor",
                   help="run directories (not committed); a fresh folder re-measures after a code change")
    p.add_argument("--compare", type=Path, default=None,
                   help="another results folder (e.g. bench/results/floor/bn-unaugmented-2026-11-25): its numbers "
                        "in brackets")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    wanted = [k for k in args.only.split(",") if k]
    for key, subset, epochs, seeds in BUDGETS:
        if wanted and key not in wanted:
            continue
        print(f"== {key}", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "bench.accuracy",
                               *budget_argv(key, subset, epochs, seeds, args.out, args.methods, args.runs)], cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"{key}: failed (exit {done.returncode}); run the same command again to resume")
    from vpns_deploy.atomic import atomic_write_json

    rows = summary(args.out)
    atomic_write_json(args.out / "floor.json", {"command": "python -m bench.floor " + " ".join(argv),
                                                "budgets": rows})
    print(markdown(rows, summary(args.compare) if args.compare else {}))


def _cell(row: dict, method: str, old: dict | None = None) -> str:
    r = row.get(method)
    if not r:
        return "—"
    was = (old or {}).get(method)
    return f"{100 * r['top1']:.2f}" + (f" ({100 * was['top1']:.2f})" if was else "")


def markdown(rows: dict, old: dict) -> str:
    """One line per budget: every method's top-1 (VPNs: the model it ships), the floor verdict with and
    without distillation; in brackets the same cell of `old` (another results folder), where present."""
    lines = ["| budget (steps) | dense FT | magnitude + FT | HYDRA | VPNs | floor | magnitude KD | HYDRA KD | "
             "VPNs KD | floor (KD) |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    verdict = {True: "met", False: "**not met**", None: "—"}
    for key, row in rows.items():
        steps = next(r["steps"] for m, r in row.items() if m in METHODS and r)
        cells = [_cell(row, m, old.get(key)) for m in ("dense", "magnitude", "hydra", "vpns")]
        kd = [_cell(row, m) for m in ("magnitude_kd", "hydra_kd", "vpns_kd")]
        lines.append(f"| {key} ({steps}) | " + " | ".join(cells) + f" | {verdict[row.get('vpns_floor_met')]} | "
                     + " | ".join(kd) + f" | {verdict[row.get('vpns_kd_floor_met')]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
