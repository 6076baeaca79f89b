"""Training throughput of the product's own steps: a dense fine-tune step against VPNs' stage-1 and
stage-2 steps, per architecture and precision, in one process or under torchrun.

    python -m bench.throughput                                   # ResNet-50, EfficientNet-Lite0, 224 px
    torchrun --standalone --nproc-per-node 2 -m bench.throughput    # the same under two processes

Every kind runs the product's code path: the stage plans of vpns_deploy/compress.py, trainer.train_step,
amp.Amp and (under torchrun) distributed.stage_runner with each rank's share of the global batch.
Inputs are random 224-px images (a step's cost does not depend on pixel values), the weights random
(nothing is downloaded). Per kind: median step time over --steps after --warmup, images/s = global
batch / median step time; rank 0 writes the JSON with the exact command, device and world size
(one entry per world size in `runs`: a run replaces the entry of its own world size).
Run it with nothing else on the machine; never by the test suite beyond a tiny setting.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.optim import SGD

from pipelines.run_dir import now, versions
from vpns_deploy.amp import Amp, resolve_amp, setup_cuda_speed
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.compress import build_prompt_spec
from vpns_deploy.stage_plans import mask_stage, tune_stage
from vpns_deploy.config import CompressConfig
from vpns_deploy.distributed import session, stage_runner
from vpns_deploy.masks import MaskSet
from vpns_deploy.models.registry import get_arch
from vpns_deploy.prompts import PromptedNet, VisualPrompt
from vpns_deploy.schedules import cosine
from vpns_deploy.trainer import PLAIN, StagePlan, train_step

KINDS = ("finetune", "vpns_stage1_prompted", "vpns_stage1_plain", "vpns_stage2_prompted", "vpns_stage2_plain")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_and_plan(kind: str, arch: str, cfg: CompressConfig, size: int, classes: int, device: torch.device):
    """The network and stage plan a step of `kind` trains (random weights)."""
    spec = get_arch(arch)
    net = spec.build(classes).to(device, memory_format=torch.channels_last)
    if kind == "finetune":
        opt = SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return PromptedNet(net, spec.inputs, None).to(device), StagePlan("finetune", 1, [(opt, cosine(opt, 1))], (PLAIN,))
    masks = MaskSet.attach(net, cfg.sparsity)
    masks.init_scores_scaled()
    masks.update_from_scores()
    prompt = VisualPrompt(build_prompt_spec(cfg, (spec.inputs.channels, size, size))).to(device)
    model = PromptedNet(net, spec.inputs, prompt).to(device)
    plan = mask_stage(model, masks, cfg, 100) if "stage1" in kind else tune_stage(model, masks, cfg, 1)
    return model, plan


def _time_kind(kind: str, arch: str, precision: str, args, ctx, device: torch.device) -> list[float]:
    cfg = CompressConfig(sparsity=0.9, epochs_mask=1, epochs_tune=1, batch_size=args.batch_size)
    torch.manual_seed(0)
    model, plan = _model_and_plan(kind, arch, cfg, args.size, args.classes, device)
    runner, sync = (model, None) if ctx is None else stage_runner(
        model, [p for o, _ in plan.optimizers for g in o.param_groups for p in g["params"]], ctx, False)
    amp = Amp(precision, device.type) if precision != "off" else None
    local = args.batch_size // (ctx.world if ctx else 1)
    x = torch.rand(local, get_arch(arch).inputs.channels, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (local,), device=device)
    times = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        train_step(runner, plan, x, y, kind.endswith("prompted"), amp, sync)
        _sync(device)
        if ctx is not None:
            torch.distributed.barrier()  # a step ends when the slowest rank's does
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="resnet50,efficientnet_lite0", help="comma-separated --arch names")
    p.add_argument("--precisions", default="off,auto", help="comma-separated: off (fp32), bf16, fp16, auto")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over torchrun ranks)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = _parse(argv)
    from vpns_deploy.device import resolve_device

    with session(resolve_device(args.device), args.batch_size) as ctx:
        device = ctx.device if ctx else resolve_device(args.device)
        setup_cuda_speed(device)
        rows = []
        for arch in args.archs.split(","):
            for precision in dict.fromkeys(resolve_amp(p, device) for p in args.precisions.split(",")):
                for kind in args.kinds.split(","):
                    t = _time_kind(kind, arch, precision, args, ctx, device)
                    med = statistics.median(t)
                    rows.append({"arch": arch, "precision": precision, "kind": kind, "median_step_s": med,
                                 "images_per_s": args.batch_size / med, "steps": len(t)})
                    if ctx is None or ctx.is_main:
                        print(f"{arch:>20} {precision:>5} {kind:>22}: {1000 * med:8.1f} ms  "
                              f"{args.batch_size / med:8.1f} img/s", flush=True)
        if ctx is not None and not ctx.is_main:
            return None
    launcher = (f"torchrun --nnodes {ctx.world // int(os.environ.get('LOCAL_WORLD_SIZE', ctx.world))} "
                f"--nproc-per-node {os.environ.get('LOCAL_WORLD_SIZE', ctx.world)} -m bench.throughput " if ctx
                else "python -m bench.throughput ")
    command = launcher + shlex.join(sys.argv[1:] if argv is None else argv)
    report = {"created": now(), "command": command, "device": _device_name(device),
              "world_size": ctx.world if ctx else 1, "global_batch": args.batch_size, "size": args.size,
              "threads": torch.get_num_threads(), "machine": versions(), "rows": rows,
              "ratios": _ratios(rows)}
    kept = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    runs = sorted([r for r in kept if r["world_size"] != report["world_size"]] + [report], key=lambda r: r["world_size"])
    atomic_write_json(args.out, {"runs": runs})
    return report


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def _ratios(rows: list[dict]) -> dict:
    """Step time of each VPNs kind over the dense fine-tune step, per arch and precision."""
    out: dict = {}
    for r in rows:
        base = next((b for b in rows if b["arch"] == r["arch"] and b["precision"] == r["precision"]
                     and b["kind"] == "finetune"), None)
        if base is not None and r["kind"] != "finetune":
            out[f"{r['arch']}/{r['precision']}/{r['kind']}"] = r["median_step_s"] / base["median_step_s"]
    return out


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
