"""How good a teacher the user's dense network is on the new data, before and after BatchNorm re-estimation.

Distillation cost magnitude + fine-tune 3.5 to 4.2 points at 70 % and 50 % sparsity because the teacher (the network
as handed over, 81 % on the CIFAR-10-JPEG test split) is passed by its students. BN re-estimation is the one
improvement that costs no optimiser step; this measures whether it would lift the teacher above them.
Forward passes only:

    python -m bench.teacher_bn --model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 \\
        --data tar:../shared/data/cifar10-jpeg.tar.gz --out bench/results/teacher-bn.json
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch

from pipelines.compress_stage import prepare_inputs
from pipelines.run_dir import now, versions
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.batchnorm import recalibrate_bn
from vpns_deploy.config import CompressConfig
from vpns_deploy.evaluate import top1
from vpns_deploy.prompts import PromptedNet


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--images", default=f"{CompressConfig().bn_images},10000",
                   help="comma-separated BN re-estimation sizes (training images)")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/results/teacher-bn.json"))
    args = p.parse_args(argv)
    cfg = CompressConfig(train_subset=args.train_subset, test_subset=args.test_subset)
    loaded, splits = prepare_inputs(args.model, args.arch, args.data, cfg)
    device = torch.device("cpu")
    rows = [{"bn": "as handed over", "images": 0,
             "test_top1": top1(PromptedNet(loaded.net, loaded.inputs, None, None).eval(), splits.test, device)}]
    for n in (int(x) for x in args.images.split(",")):
        for name, policy in (("re-estimated, augmented as in training (the product's)", splits.augment),
                             ("re-estimated, un-augmented", None)):
            model = PromptedNet(copy.deepcopy(loaded.net), loaded.inputs, None, None)
            t0 = time.perf_counter()
            seen = recalibrate_bn(model, splits.train, n, cfg.batch_size, device, cfg.seed, policy=policy)
            rows.append({"bn": name, "images": seen, "seconds": time.perf_counter() - t0,
                         "test_top1": top1(model, splits.test, device)})
    results = {"command": "python -m bench.teacher_bn " + shlex.join(sys.argv[1:] if argv is None else argv),
               "at": now(), "machine": versions(), "test_images": len(splits.test), "rows": rows}
    atomic_write_json(args.out, results)
    for r in rows:
        print(f"{r['bn']:<58} {r['images']:>6} images  test top-1 {r['test_top1']:.2%}")
    return results


if __name__ == "__main__":
    main()
