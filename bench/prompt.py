"""Does the learned prompt help? VPNs against its paired control (the same run with the prompt frozen at
zero) at each seed, from the runs of bench/recipes/prompt/*.toml (EfficientNet-Lite0 -> CIFAR-10-JPEG,
128 px, 9,500 / 500 images, 1 + 1 epochs, 90 % unstructured, prompt rates matched to each stage's steps).

Per seed: test top-1 of the VPNs network with and without its prompt and of the control, |P| after each
stage; over seeds: the paired differences with their standard error. The mask check: the fraction of
kept weights on which VPNs' mask and its control's differ at one seed, against two controls of different
seeds: a prompt that moves the mask no more than a seed change does is not what decides the mask.

    vpns-deploy run bench/recipes/prompt/<cell>.toml   # each cell (resumable; finished ones are skipped)
    python -m bench.prompt                             # the table, JSON and PNG from the runs there are
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "bench/runs/prompt"
OUT = ROOT / "bench/results/prompt.json"
SEEDS = (7, 9, 17)


def _run(arm: str, seed: int) -> Path:
    return RUNS / f"{arm}-s0.9-seed{seed}"


def arm(run: Path) -> dict | None:
    """Test top-1 (plain, prompted), |P| after each stage, the prompt decision of one finished run."""
    if not (run / "manifest.json").is_file():
        return None
    m = json.loads((run / "manifest.json").read_text())["metrics"]
    return {"top1_plain": m["top1_plain"], "top1_prompted": m["top1_prompted"],
            "prompt_mean_abs": {e["stage"]: e.get("prompt_mean_abs") for e in m["epochs"]},
            "fold": m["prompt_decision"]["fold"],
            "shipped": m["top1_prompted"] if m["prompt_decision"]["fold"] else m["top1_plain"]}


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


def summarise() -> dict:
    cells = {seed: {name: arm(_run(name, seed)) for name in ("vpns", "zero")} for seed in SEEDS}
    pairs = {s: c for s, c in cells.items() if c["vpns"] and c["zero"]}
    result: dict = {"cells": {str(s): c for s, c in cells.items()}, "paired_seeds": sorted(pairs)}
    if pairs:
        pts = lambda f: paired([100 * (f(c["vpns"]) - c["zero"]["top1_plain"]) for c in pairs.values()])  # noqa: E731
        result["vpns_minus_control"] = {"prompted": pts(lambda v: v["top1_prompted"]),
                                        "plain": pts(lambda v: v["top1_plain"]),
                                        "shipped": pts(lambda v: v["shipped"])}
    masks = {}
    if (_run("vpns", 7) / "masks.pt").is_file() and (_run("zero", 7) / "masks.pt").is_file():
        masks["vpns_vs_control_seed7"] = mask_difference(_run("vpns", 7), _run("zero", 7))
    if (_run("zero", 7) / "masks.pt").is_file() and (_run("zero", 9) / "masks.pt").is_file():
        masks["control_seed7_vs_seed9"] = mask_difference(_run("zero", 7), _run("zero", 9))
    result["masks"] = masks
    return result


def markdown(result: dict) -> str:
    lines = ["| seed | VPNs, prompted % | VPNs, plain % | control % | VPNs shipped | |P| stage 1 / 2 |",
             "|---:|---:|---:|---:|---|---|"]
    for seed, c in result["cells"].items():
        v, z = c["vpns"], c["zero"]
        if not v and not z:
            continue
        fmt = lambda x: "-" if x is None else f"{100 * x:.2f}"  # noqa: E731
        p = (v or {}).get("prompt_mean_abs", {})
        lines.append(f"| {seed} | {fmt(v and v['top1_prompted'])} | {fmt(v and v['top1_plain'])} | "
                     f"{fmt(z and z['top1_plain'])} | {'-' if not v else ('prompt' if v['fold'] else 'plain')} | "
                     f"{p.get('mask', 0) or 0:.4f} / {p.get('tune', 0) or 0:.4f} |")
    d = result.get("vpns_minus_control")
    if d:
        lines.append("")
        for k, v in d.items():
            se = "" if v["se"] is None else f" +- {v['se']:.2f} (SE)"
            lines.append(f"VPNs {k} - control: {v['mean']:+.2f}{se} points over {v['n']} paired seed(s)")
    for k, v in result["masks"].items():
        lines.append(f"mask difference, {k.replace('_', ' ')}: {100 * v['fraction_of_kept']:.1f} % of kept weights")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    result = summarise()
    result["command"] = "python -m bench.prompt"
    result["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                      text=True).stdout.strip()
    from calibration.cpu import cpu_facts

    result["machine"] = cpu_facts().model
    result["markdown"] = markdown(result)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(result["markdown"])


if __name__ == "__main__":
    main()
