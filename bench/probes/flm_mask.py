"""Probe: how well does frequency label mapping work on EfficientNet-Lite0 (ImageNet) -> CIFAR-10 when
computed on the dense network vs on the network under the initial 90 % mask (the paper's place)?

Prints, for each: the fraction of (augmented) training images that land on their class's mapped
source, and the mapped top-1 on test images with no training at all.

    python -m bench.probes.flm_mask --train-subset 2000 --test-subset 2000 --input-size 128
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pipelines.compress_stage import prepare_inputs
from vpns_deploy.compress import attach_masks
from vpns_deploy.config import CompressConfig
from vpns_deploy.evaluate import top1
from vpns_deploy.heads import frequency_label_map
from vpns_deploy.models.efficientnet_lite import checkpoint_path
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.prompts import PromptedNet


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-subset", type=int, default=2000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--sparsities", default="0,0.5,0.7,0.9")
    p.add_argument("--data", default="tar:../shared/data/cifar10-jpeg.tar.gz")
    args = p.parse_args()
    cpu = torch.device("cpu")
    out = {"args": vars(args), "rows": []}
    for sp in [float(s) for s in args.sparsities.split(",")]:
        cfg = CompressConfig(head="map", sparsity=sp if sp > 0 else 0.5, train_subset=args.train_subset,
                             test_subset=args.test_subset, batch_size=100)
        loaded, splits = prepare_inputs(checkpoint_path(), "efficientnet_lite0", args.data, cfg,
                                        inputs=InputOverrides(input_size=args.input_size))
        net = loaded.net
        if sp > 0:
            masks = attach_masks(net, cfg, torch.zeros(1, *splits.train.image_shape))
            masks.init_scores_scaled()
            masks.update_from_scores()
        model = PromptedNet(net, loaded.inputs, None, label_map=torch.zeros(splits.num_classes, dtype=torch.long))
        t0 = time.perf_counter()
        seq, counts = frequency_label_map(model, splits.train, splits.augment, 100, cpu, 7)
        model.label_map.copy_(seq)
        hits = float(sum(counts[i, j] for j, i in enumerate(seq.tolist())) / counts.sum())
        acc = top1(model, splits.test, cpu, prompted=False)
        row = {"sparsity": sp, "flm_train_hit_rate": hits, "test_top1_mapped_no_training": acc,
               "distinct_sources_predicted": int((counts.sum(1) > 0).sum()), "seq": seq.tolist(),
               "seconds": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        out["rows"].append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
