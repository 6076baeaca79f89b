"""Does the learned prompt help? VPNs against its paired control (the same run with the prompt frozen at
zero) at each seed, from the runs of bench/recipes/prompt.toml (EfficientNet-Lite0 -> CIFAR-10-JPEG,
128 px, 9,500 / 500 images, 1 + 1 epochs, 90 % unstructured, prompt rates matched to each stage's steps).

Per seed: test top-1 of the VPNs network with and without its prompt and of the control, |P| after each
stage; over seeds: the paired differences with their standard error. The mask check: the fraction of
kept weights on which VPNs' mask and its control's differ at one seed, against two controls of different
seeds: a prompt that moves the mask no more than a seed change does is not what decides the mask.

    vpns-deploy run bench/recipes/prompt.toml   # the runs (resumable; finished ones are skipped)
    python -m bench prompt [--partial]          # the table, JSON and PNG from them
"""
from __future__ import annotations

import json
import math
from pathlib import Path

SEEDS = (7, 9, 17)


def arm(run: Path) -> dict:
    """Test top-1 (plain, prompted), |P| after each stage, the prompt decision of one finished run."""
    from bench.grid import made_by

    m = json.loads((run / "manifest.json").read_text())
    metrics = m["metrics"]
    return {"created": m["created"], **made_by(m), "run": str(run),
            "top1_plain": metrics["top1_plain"], "top1_prompted": metrics["top1_prompted"],
            "prompt_mean_abs": {e["stage"]: e.get("prompt_mean_abs") for e in metrics["epochs"]},
            "fold": metrics["prompt_decision"]["fold"],
            "shipped": metrics["top1_prompted"] if metrics["prompt_decision"]["fold"] else metrics["top1_plain"]}


def paired(diffs: list[float]) -> dict:
    """Mean of paired differences (points) and its standard error (None with one pair)."""
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    return {"n": n, "mean": mean, "se": se, "each": diffs}


def mask_difference(a: Path, b: Path) -> dict:
    """Weights kept by exactly one of two runs' masks, as a fraction of the weights each keeps."""
    import torch

    ma, mb = (torch.load(r / "masks.pt", weights_only=True) for r in (a, b))
    differ = kept = total = 0
    for name, x in ma.items():
        x, y = x.bool(), mb[name].bool()
        differ += int((x ^ y).sum())
        kept += int(x.sum())
        total += x.numel()
    return {"runs": [a.name, b.name], "kept": kept, "total": total, "differ": differ,
            "fraction_of_kept": differ / 2 / max(kept, 1)}


def summarise(records: dict[str, dict], title: str = "The learned prompt against its zero-prompt control") -> dict:
    cells = {seed: {a: records.get(f"{a}-s0.9-seed{seed}") for a in ("vpns", "zero")} for seed in SEEDS}
    pairs = [c for c in cells.values() if c["vpns"] and c["zero"]]
    out: dict = {"paired_seeds": [s for s, c in cells.items() if c["vpns"] and c["zero"]]}
    if pairs:
        def diff(f):
            return paired([100 * (f(c["vpns"]) - c["zero"]["top1_plain"]) for c in pairs])

        out["vpns_minus_control"] = {"prompted": diff(lambda v: v["top1_prompted"]),
                                     "plain": diff(lambda v: v["top1_plain"]), "shipped": diff(lambda v: v["shipped"])}
    masks = {}
    for key, (a, b) in {"vpns_vs_control_seed7": ("vpns-s0.9-seed7", "zero-s0.9-seed7"),
                        "control_seed7_vs_seed9": ("zero-s0.9-seed7", "zero-s0.9-seed9")}.items():
        if a in records and b in records:
            masks[key] = mask_difference(Path(records[a]["run"]), Path(records[b]["run"]))
    out["masks"] = masks
    out["markdown"] = {title: markdown(cells, out)}
    return out


def markdown(cells: dict, out: dict) -> str:
    fmt = lambda x: "-" if x is None else f"{100 * x:.2f}"  # noqa: E731
    lines = ["| seed | VPNs, prompted % | VPNs, plain % | control % | VPNs ships | mean abs(P) after stage 1 / 2 |",
             "|---:|---:|---:|---:|---|---|"]
    for seed, c in cells.items():
        v, z = c["vpns"], c["zero"]
        if not v and not z:
            continue
        pm = (v or {}).get("prompt_mean_abs", {})
        lines.append(f"| {seed} | {fmt(v and v['top1_prompted'])} | {fmt(v and v['top1_plain'])} | "
                     f"{fmt(z and z['top1_plain'])} | {'-' if not v else ('prompt' if v['fold'] else 'plain')} | "
                     + (f"{pm.get('mask') or 0:.4f} / {pm.get('tune') or 0:.4f} |" if v else "- |"))
    for k, d in (out.get("vpns_minus_control") or {}).items():
        se = "" if d["se"] is None else f" +- {d['se']:.2f} (standard error)"
        lines.append(f"\nVPNs {k} minus control: {d['mean']:+.2f}{se} points over {d['n']} paired seed(s).")
    for k, m in out["masks"].items():
        lines.append(f"\nMasks, {k.replace('_', ' ')}: {100 * m['fraction_of_kept']:.1f} % of kept weights differ.")
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str = "EfficientNet-Lite0 -> CIFAR-10, 128 px, 90 %") -> None:
    """Per seed: test top-1 of VPNs (prompted, plain) and of its control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    seeds = [s for s in SEEDS if f"vpns-s0.9-seed{s}" in runs or f"zero-s0.9-seed{s}" in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, name, key) in enumerate((("VPNs, prompted", "vpns", "top1_prompted"),
                                            ("VPNs, plain", "vpns", "top1_plain"), ("control", "zero", "top1_plain"))):
        xs = [j + (i - 1) * 0.25 for j, s in enumerate(seeds) if f"{name}-s0.9-seed{s}" in runs]
        ys = [100 * runs[f"{name}-s0.9-seed{s}"][key] for s in seeds if f"{name}-s0.9-seed{s}" in runs]
        ax.bar(xs, ys, 0.25, label=label)
    ax.set_xticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    values = [100 * r[k] for r in runs.values() for k in ("top1_plain", "top1_prompted") if r[k] is not None]
    ax.set_ylim(math.floor(min(values)) - 2, math.ceil(max(values)) + 1)
    ax.set_ylabel("test top-1 %")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: learned prompt vs zero prompt", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from bench import grid

    args = grid.table_args(__doc__, argv)
    return grid.regenerate("prompt", summarise, plot, args.recipe, args.out, args.partial, record=arm)


if __name__ == "__main__":
    main()
