"""Time one optimiser step of each kind on real CIFAR-10 batches: the masking overhead of VPNs.

    python -m bench.step_time --model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 \\
        --data tar:../shared/data/cifar10-jpeg.tar.gz

Kinds: a plain fine-tune step (SGD on all weights), a VPNs stage-1 step with the prompt (scores +
prompt, mask re-selected), the un-prompted VPNs stage-1 step, and a HYDRA stage-1 step. Median of
--steps timed steps after --warmup, same batches for every kind. Run it with nothing else on the cores.
"""
from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.optim import SGD

from pipelines.compress_stage import prepare_inputs
from pipelines.run_dir import now, versions
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.compress import build_prompt_spec
from vpns_deploy.stage_plans import mask_stage
from vpns_deploy.config import CompressConfig
from vpns_deploy.data.batches import augment, num_batches, to_unit_float
from vpns_deploy.masks import MaskSet
from vpns_deploy.prompts import PromptedNet, VisualPrompt
from vpns_deploy.schedules import cosine
from vpns_deploy.trainer import PLAIN, StagePlan, train_step


def _time(model, plan, batches, prompted: bool, warmup: int) -> list[float]:
    times = []
    for i, (x, y) in enumerate(batches):
        t0 = time.perf_counter()
        train_step(model, plan, x, y, prompted)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/step_time.json"))
    args = p.parse_args(argv)

    cfg = CompressConfig(sparsity=0.9, epochs_mask=1, epochs_tune=1, batch_size=args.batch_size, device="cpu")
    loaded, splits = prepare_inputs(args.model, args.arch, args.data, cfg)
    gen = torch.Generator().manual_seed(0)
    n = args.batch_size
    batches = []
    for i in range(args.steps + args.warmup):
        x = augment(to_unit_float(splits.train.images[i * n:(i + 1) * n]), splits.augment, gen)
        batches.append((x, splits.train.labels[i * n:(i + 1) * n]))

    results = {}
    # Plain fine-tune step: every weight trained with SGD, no masks.
    dense = PromptedNet(copy.deepcopy(loaded.net).to(memory_format=torch.channels_last), loaded.inputs, None)
    opt = SGD(dense.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    plan = StagePlan("finetune", 1, [(opt, cosine(opt, 1))], (PLAIN,))
    results["finetune"] = _time(dense, plan, batches, False, args.warmup)
    for kind, with_prompt, prompted in (("vpns_stage1_prompted", True, True),
                                        ("vpns_stage1_unprompted", True, False),
                                        ("hydra_stage1", False, False)):
        net = copy.deepcopy(loaded.net).to(memory_format=torch.channels_last)
        masks = MaskSet.attach(net)
        masks.init_scores_scaled()
        masks.update_from_scores(cfg.sparsity)
        prompt = VisualPrompt(build_prompt_spec(cfg, splits.train.image_shape)) if with_prompt else None
        model = PromptedNet(net, loaded.inputs, prompt)
        plan = mask_stage(model, masks, cfg, num_batches(len(splits.train), n))
        results[kind] = _time(model, plan, batches, prompted, args.warmup)
    summary = {k: {"median_s": statistics.median(v), "p90_s": sorted(v)[int(0.9 * (len(v) - 1))], "steps": len(v)}
               for k, v in results.items()}
    ft = summary["finetune"]["median_s"]
    vpns_mean = (summary["vpns_stage1_prompted"]["median_s"] + summary["vpns_stage1_unprompted"]["median_s"]) / 2
    report = {
        "created": now(), "command": "python -m bench.step_time " + shlex.join(sys.argv[1:] if argv is None else argv),
        "batch_size": n, "threads": torch.get_num_threads(), "machine": versions(), "steps": summary,
        "ratio_vpns_stage1_over_finetune": vpns_mean / ft,
        "ratio_hydra_stage1_over_finetune": summary["hydra_stage1"]["median_s"] / ft,
    }
    atomic_write_json(args.out, report)
    for k, v in summary.items():
        print(f"{k:>24}: median {1000 * v['median_s']:.1f} ms  p90 {1000 * v['p90_s']:.1f} ms")
    print(f"VPNs stage-1 step / fine-tune step: {report['ratio_vpns_stage1_over_finetune']:.3f}")
    return report


if __name__ == "__main__":
    main()
