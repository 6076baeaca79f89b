"""How far did the learned prompt move, and how far could it have? (Does the prompt have room to matter?)

Reads finished runs (a transfer cell's run directory, or any `compress` run), no training: the prompt's
size over its frame (mean and max |delta| on the [0, 1] pixel scale, and the share of frame values that
moved by at least one 8-bit level, 1/255), next to the most stage 1's Adam could have moved any value:
prompted steps x learning rate (Adam's step is about lr whatever the gradient's scale; the prompt steps
only on the prompted pass, half of a two-pass stage's optimiser steps). The reference's own bound
(CIFAR-10 at batch 256: 196 prompted steps an epoch, 30 epochs at 1e-4 with x0.1 at epochs 15 and 21)
is about 0.31. A prompt that cannot move one grey level cannot change a prediction, so a
VPNs-vs-zero-prompt comparison at that budget measures nothing.

    python -m bench.probes.prompt_travel bench/runs/transfer/vpns-s0.9-seed7 [more runs]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REFERENCE_STEPS_PER_EPOCH = 196  # VPNS.md §1: CIFAR-10's 50,000 images at batch 256, one prompted pass each
REFERENCE_LR_PROMPT_MASK = 1e-4
REFERENCE_MILESTONES = (15, 21)  # of 30 stage-1 epochs: the prompt's lr x0.1 at each (VPNS.md §1)
REFERENCE_EPOCHS = 30


def reference_stage1_bound() -> float:
    """The most the reference's stage-1 Adam can move a prompt value: sum over epochs of steps x lr."""
    lr = [REFERENCE_LR_PROMPT_MASK * 0.1 ** sum(e >= m for m in REFERENCE_MILESTONES) for e in range(REFERENCE_EPOCHS)]
    return REFERENCE_STEPS_PER_EPOCH * sum(lr)


def prompted_steps(epochs: list[dict], stage: str) -> int:
    """Optimiser steps of `stage` taken on the prompted pass: half of them, as every batch runs both passes."""
    return sum(e["optimizer_steps"] for e in epochs if e["stage"] == stage) // 2


def travel(run: Path) -> dict:
    """The prompt's measured size and stage 1's bound for one run directory (read-only, no unpickling)."""
    manifest = json.loads((run / "manifest.json").read_text())
    state = torch.load(run / "prompt.pt", map_location="cpu", weights_only=True)
    delta, region = state["delta"], state["region"][0] > 0  # region: the learnable frame (prompts._region)
    frame = delta[:, region]
    epochs = manifest["metrics"]["epochs"]
    steps = {s: sum(e["optimizer_steps"] for e in epochs if e["stage"] == s) for s in {e["stage"] for e in epochs}}
    cfg = manifest["config"]
    lr1 = cfg["optim"]["lr_prompt_mask"]
    trains_in = cfg.get("prompt_trains_in", "both") if cfg.get("prompt_trainable", True) else "none"
    return {
        "run": str(run), "method": cfg["method"], "sparsity": cfg["sparsity"],
        "prompt_shape": list(delta.shape), "frame_values": int(frame.numel()),
        "mean_abs": float(frame.abs().mean()) if frame.numel() else 0.0,
        "max_abs": float(frame.abs().max()) if frame.numel() else 0.0,
        "share_at_least_one_level": float((frame.abs() >= 1 / 255).float().mean()) if frame.numel() else 0.0,
        "optimizer_steps": steps, "lr_prompt_mask": lr1,
        "prompt_trains_in": trains_in,
        "stage1_prompted_steps": prompted_steps(epochs, "mask"),
        "stage1_adam_bound": prompted_steps(epochs, "mask") * lr1 if trains_in in ("both", "mask") else 0.0,
        "reference_stage1_adam_bound": reference_stage1_bound(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/results/probes/prompt_travel.json"))
    args = p.parse_args(argv)
    from vpns_deploy.atomic import atomic_write_json

    rows = [travel(r) for r in args.runs if (r / "prompt.pt").is_file()]
    for r in rows:
        print(f"{r['run']}: mean |delta| {r['mean_abs']:.5f}, max {r['max_abs']:.4f}, "
              f"{r['share_at_least_one_level']:.1%} of frame values moved >= 1/255; stage-1 Adam bound "
              f"{r['stage1_adam_bound']:.4f} ({r['stage1_prompted_steps']} prompted steps x {r['lr_prompt_mask']:g}; "
              f"the prompt trains in: {r['prompt_trains_in']}) "
              f"vs the reference's {r['reference_stage1_adam_bound']:.2f}")
    atomic_write_json(args.out, {"command": "python -m bench.probes.prompt_travel " + " ".join(sys.argv[1:]),
                                 "runs": rows})


if __name__ == "__main__":
    main()
