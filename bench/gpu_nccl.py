"""The product's torchrun code paths on one process: `compress` leaves them out at WORLD_SIZE=1, and
NCCL refuses two ranks on one GPU, so a one-GPU machine reaches them only through this smoke run.

    torchrun --standalone --nproc-per-node 1 -m bench.gpu_nccl --device cuda --out nccl.json

It joins the job as compress does (distributed.join: NCCL on CUDA, gloo on the CPU), wraps a digits
network with its prompt and masks in the stage's DDP runner, takes AMP training steps through
trainer.train_step, averages BN statistics, gathers the ranks' checksums, broadcasts a checkpoint
state from rank 0 and evaluates a sharded top-1, then leaves the job as the CLI does. Rank 0 writes
what each call returned.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def smoke(device_name: str, steps: int = 3) -> dict:
    from vpns_deploy.amp import Amp, resolve_amp
    from vpns_deploy.compress import build_prompt_spec
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.data import load_splits
    from vpns_deploy.device import resolve_device
    from vpns_deploy.distributed import (average_bn_stats, broadcast_state, identical_on_ranks, join, leave,
                                         sharded_top1_pair, stage_runner)
    from vpns_deploy.masks import MaskSet
    from vpns_deploy.models.registry import get_arch
    from vpns_deploy.prompts import PromptedNet, VisualPrompt
    from vpns_deploy.stage_plans import mask_stage
    from vpns_deploy.trainer import PROMPTED, train_step

    t0 = time.perf_counter()
    ctx = join(resolve_device(device_name))
    joined_s = time.perf_counter() - t0
    torch.manual_seed(0)
    spec = get_arch("digits_cnn")
    splits = load_splits("digits", spec.inputs)
    cfg = CompressConfig(sparsity=0.9, epochs_mask=1, epochs_tune=1, batch_size=64)
    net = spec.build(splits.num_classes).to(ctx.device, memory_format=torch.channels_last)
    masks = MaskSet.attach(net, cfg.sparsity)
    masks.init_scores_scaled()
    masks.update_from_scores()
    prompt = VisualPrompt(build_prompt_spec(cfg, splits.train.image_shape)).to(ctx.device)
    model = PromptedNet(net, spec.inputs, prompt).to(ctx.device)
    plan = mask_stage(model, masks, cfg, steps)
    runner, sync = stage_runner(model, [p for o, _ in plan.optimizers for g in o.param_groups for p in g["params"]],
                                ctx, False)
    amp = Amp(resolve_amp("auto", ctx.device), ctx.device.type)
    x = splits.train.images[:64].to(ctx.device).float().div_(255)
    y = splits.train.labels[:64].to(ctx.device)
    losses = []
    for i in range(steps):
        loss, _ = train_step(runner, plan, x, y, plan.passes[i % len(plan.passes)] == PROMPTED, amp, sync)
        losses.append(float(loss))
    average_bn_stats(model, ctx.world)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sums = identical_on_ranks(state, "smoke", ctx)
    back = broadcast_state(state if ctx.is_main else None, ctx)
    plain, prompted = sharded_top1_pair(model, splits.test, ctx.device, True, ctx)
    result = {"backend": ctx.backend, "world": ctx.world, "rank": ctx.rank, "device": str(ctx.device),
              "ddp": type(runner).__name__, "amp": amp.precision, "losses": losses,
              "losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist()), "checksums": sums,
              "broadcast_state_equal": back is not None and all(torch.equal(back[k], state[k]) for k in state),
              "sharded_top1_plain": plain, "sharded_top1_prompted": prompted, "join_seconds": joined_s}
    leave()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from vpns_deploy.atomic import atomic_write_json
    from vpns_deploy.distributed import env_rank

    result = smoke(args.device)
    if env_rank() == 0:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
