"""Probe: how good is the mask a method STARTS from, before any training step?

For each sparsity: top-1 (validation split, no training) of
- hydra-scaled: the product's score init, s = sqrt(6/fan_in) * W / max|W| per layer, global top-k
  (where VPNs and HYDRA start);
- magnitude-global: global |W| top-k (where --method magnitude starts);
- magnitude-layerwise: every layer pruned to the same sparsity by |W|;
each as-is and after BatchNorm re-estimation on training images (vpns_deploy/batchnorm.py).

    python -m bench.probes.init_mask --model ../shared/models/cifar10/resnet20-12fca82f.th --arch cifar_resnet20 \
        --data tar:../shared/data/cifar10-jpeg.tar.gz --train-subset 2000
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from pipelines.compress_stage import prepare_inputs
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.batchnorm import recalibrate_bn
from vpns_deploy.compress import attach_masks
from vpns_deploy.config import CompressConfig
from vpns_deploy.evaluate import top1
from vpns_deploy.heads import frequency_label_map
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.prompts import PromptedNet

INITS = ("hydra-scaled", "magnitude-global", "magnitude-layerwise")


def set_initial_mask(masks, init: str, sparsity: float) -> None:
    if init == "hydra-scaled":
        masks.init_scores_scaled()
        masks.update_from_scores()
    elif init == "magnitude-global":
        masks.update_from_magnitude()
    else:  # each layer's |W| over its own keep-threshold: a global top-k of that prunes every layer alike
        imp = []
        for _, m in masks.layers:
            w = m.weight.detach().abs().flatten()
            k = max(1, int(round((1 - sparsity) * w.numel())))
            imp.append(m.weight.detach().abs() / torch.topk(w, k).values[-1].clamp_min(1e-12))
        masks.select(imp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--data", default="tar:../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--head", default="keep")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--train-subset", type=int, default=2000)
    p.add_argument("--sparsities", default="0.7,0.9")
    p.add_argument("--bn-images", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("bench/results/probes/init_mask.json"))
    args = p.parse_args()
    if args.model is None:
        from vpns_deploy.models.efficientnet_lite import checkpoint_path
        args.model = Path(checkpoint_path(args.arch))
    cpu = torch.device("cpu")
    rows = []
    cfg = CompressConfig(head=args.head, train_subset=args.train_subset, test_subset=10, batch_size=100)
    loaded0, splits = prepare_inputs(args.model, args.arch, args.data, cfg,
                                     inputs=InputOverrides(input_size=args.input_size))
    label_map = None
    if args.head == "map":  # the dense network's frequency label map, as the product's default
        view = PromptedNet(loaded0.net, loaded0.inputs, None, torch.zeros(splits.num_classes, dtype=torch.long))
        label_map, _ = frequency_label_map(view, splits.train, splits.augment, 100, cpu, 7)
    dense = PromptedNet(copy.deepcopy(loaded0.net), loaded0.inputs, None, label_map)
    rows.append({"sparsity": 0.0, "init": "dense", "val_top1": top1(dense, splits.val, cpu, prompted=False)})
    print(json.dumps(rows[-1]), flush=True)
    for sp in [float(s) for s in args.sparsities.split(",")]:
        for init in INITS:
            t0 = time.perf_counter()
            net = copy.deepcopy(loaded0.net)
            masks = attach_masks(net, CompressConfig(sparsity=sp), torch.zeros(1, *splits.train.image_shape))
            set_initial_mask(masks, init, sp)
            model = PromptedNet(net, loaded0.inputs, None, label_map)
            row = {"sparsity": sp, "init": init, "achieved": masks.sparsity(),
                   "val_top1": top1(model, splits.val, cpu, prompted=False)}
            recalibrate_bn(model, splits.train, args.bn_images, 100, cpu, seed=0)
            row["val_top1_bn_recalibrated"] = top1(model, splits.val, cpu, prompted=False)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
