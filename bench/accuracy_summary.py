"""Turn the accuracy grid's cells into the numbers the targets ask for, a table and a plot."""
from __future__ import annotations

import statistics
from pathlib import Path

METHOD_LABELS = {"dense": "dense fine-tune", "magnitude": "magnitude + FT", "hydra": "HYDRA", "vpns": "VPNs",
                 "magnitude_kd": "magnitude + FT, distilled", "hydra_kd": "HYDRA, distilled",
                 "vpns_kd": "VPNs, distilled"}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def _groups(results: dict) -> dict[tuple[str, float | None], list[dict]]:
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for cell in results["cells"].values():
        groups.setdefault((cell["method"], cell["sparsity"]), []).append(cell)
    return groups


def _time_to_reach(curve: list[dict], target: float, key: str) -> float | None:
    for point in curve:
        value = point[key]
        if value is not None and value >= target:
            return point["train_seconds_cum"]
    return None


def shipped_key(cell: dict) -> str:
    """"top1_prompted" where the last epoch's validation top-1 says the prompt helps or ties (the product's
    rule, prompts.prompt_decision), else "top1_plain"; never the better of the two on the test split,
    which would select on test."""
    from vpns_deploy.prompts import prompt_decision

    if cell.get("top1_prompted") is None:
        return "top1_plain"
    last = cell["curve"][-1]
    decision = prompt_decision(last.get("val_top1_plain"), last.get("val_top1_prompted"), has_prompt=True)
    return "top1_prompted" if decision["fold"] else "top1_plain"


def shipped_top1(cell: dict) -> float:
    """Test top-1 of the model the product would ship (see shipped_key)."""
    return cell[shipped_key(cell)]


def summarise(results: dict) -> dict:
    groups = _groups(results)
    rows = []
    for (method, sp), cells in sorted(groups.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
        row = {"method": method, "sparsity": sp, "top1_plain": _stats([c["top1_plain"] for c in cells]),
               "train_seconds": _stats([c["train_seconds"] for c in cells]),
               "optimizer_steps": cells[0]["optimizer_steps"]}
        if method.startswith("vpns"):  # vpns and vpns_kd carry a prompt
            row["top1_prompted"] = _stats([c["top1_prompted"] for c in cells])
            row["top1_shipped"] = _stats([shipped_top1(c) for c in cells])
        rows.append(row)
    out: dict = {"rows": rows, "targets": {}}
    by = {(r["method"], r["sparsity"]): r for r in rows}
    v, h = by.get(("vpns", 0.9)), by.get(("hydra", 0.9))
    d = by.get(("dense", None))
    t = out["targets"]
    if v and h:
        best_v = v["top1_shipped"]["mean"]  # prompt or not as validation decided, never the better on test
        t["vpns_minus_hydra_at_0.9"] = {
            "with_prompt": v["top1_prompted"]["mean"] - h["top1_plain"]["mean"],
            "without_prompt": v["top1_plain"]["mean"] - h["top1_plain"]["mean"],
            "target": 0.02, "met": best_v - h["top1_plain"]["mean"] >= 0.02}
        # Wall-clock for VPNs to reach HYDRA's final top-1, per seed, as a fraction of HYDRA's.
        fractions = []
        for seed in sorted({c["seed"] for c in results["cells"].values() if c["method"] == "hydra" and c["sparsity"] == 0.9}):
            hc = next((c for c in results["cells"].values() if (c["method"], c["sparsity"], c["seed"]) == ("hydra", 0.9, seed)), None)
            vc = next((c for c in results["cells"].values() if (c["method"], c["sparsity"], c["seed"]) == ("vpns", 0.9, seed)), None)
            if hc and vc:
                reach = _time_to_reach(vc["curve"], hc["top1_plain"], shipped_key(vc))  # the shipped model's curve
                fractions.append(None if reach is None else reach / hc["train_seconds"])
        t["vpns_time_to_hydra_final"] = {"fraction_per_seed": fractions, "target": 0.5,
                                         "met": bool(fractions) and all(f is not None and f <= 0.5 for f in fractions)}
    if v and d:
        best_v = v["top1_shipped"]["mean"]
        t["vpns_vs_dense_at_0.9"] = {"gap": d["top1_plain"]["mean"] - best_v, "target": 0.01,
                                     "met": d["top1_plain"]["mean"] - best_v <= 0.01}
    mask_steps = [c["seconds_per_step"]["mask"] for c in results["cells"].values()
                  if c["method"] == "vpns" and "mask" in c["seconds_per_step"]]
    ft_steps = [c["seconds_per_step"]["finetune"] for c in results["cells"].values()
                if c["method"] == "dense" and "finetune" in c["seconds_per_step"]]
    if mask_steps and ft_steps:
        ratio = statistics.fmean(mask_steps) / statistics.fmean(ft_steps)
        t["vpns_stage1_step_over_finetune_step"] = {
            "vpns_stage1_s": statistics.fmean(mask_steps), "finetune_s": statistics.fmean(ft_steps),
            "ratio": ratio, "target": 1.25, "met": ratio <= 1.25}
    return out


def _fmt(s: dict | None) -> str:
    if s is None:
        return "—"
    return f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f} (n={s['n']})" if s["n"] > 1 else "")


def table(results: dict) -> str:
    summary = results.get("summary") or summarise(results)
    lines = ["| method | sparsity | top-1 % (no prompt) | top-1 % (prompt) | optimiser steps | train s (mean) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        sp = "—" if r["sparsity"] is None else f"{r['sparsity']:g}"
        lines.append(f"| {METHOD_LABELS.get(r['method'], r['method'])} | {sp} | {_fmt(r['top1_plain'])} | "
                     f"{_fmt(r.get('top1_prompted'))} | {r['optimizer_steps']} | {r['train_seconds']['mean']:.0f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results.get("summary") or summarise(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rows = summary["rows"]
    for method in ("magnitude", "hydra", "vpns", "magnitude_kd", "hydra_kd", "vpns_kd"):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        if not pts:
            continue
        xs = [100 * r["sparsity"] for r in pts]
        for key, style, suffix in (("top1_plain", "-o", ""), ("top1_prompted", "--s", " (with prompt)")):
            if key not in pts[0]:
                continue
            ys = [100 * r[key]["mean"] for r in pts]
            es = [100 * r[key]["std"] for r in pts]
            label = METHOD_LABELS[method] + (" (no prompt)" if method.startswith("vpns") and key == "top1_plain" else suffix)
            ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=label)
    dense = [r for r in rows if r["method"] == "dense"]
    if dense:
        ax.axhline(100 * dense[0]["top1_plain"]["mean"], color="grey", ls=":", label="dense fine-tune")
    ax.set_xlabel("sparsity (% of conv/linear weights removed)")
    ax.set_ylabel("top-1 % (full test split)")
    ax.set_title("Same optimiser steps per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
