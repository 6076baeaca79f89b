"""The simplest baseline, measured beside every run, so a run can say when its method fell below it.

On a small budget a learned mask can ship a model worse than global magnitude pruning with no training
at all (19 points worse, measured at 32 optimiser steps). Nothing in a run showed it. So every compress also measures
the dense network under the magnitude mask of the run's own granularity and sparsity (global top-k of
|w|; channels: their group's L1 norm), with the BatchNorm statistics re-estimated as the run's own are,
and no optimiser step. It is forward passes only: `bn_images` training images and one pass over test
(and validation, where there is one). The run's summary and report compare the shipped model with it;
being below it is worth a warning, never a silent swap (the user chose the method).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from vpns_deploy.batchnorm import recalibrate_bn
from vpns_deploy.config import CompressConfig
from vpns_deploy.data import Splits
from vpns_deploy.evaluate import top1
from vpns_deploy.models import LoadedModel
from vpns_deploy.prompts import PromptedNet
from vpns_deploy.sparsity.modes import granularity_for

BASELINE_NAME = "magnitude mask at the run's sparsity + BatchNorm re-estimation, no training"


@dataclass
class Baseline:
    """The baseline's numbers; `shipped_*` and `below` are filled in once the run's model exists."""

    name: str
    test_top1: float
    val_top1: float | None
    bn_images: int
    seconds: float
    shipped_test_top1: float | None = None
    below: bool | None = None  # the shipped model's test top-1 is under the baseline's

    def compare(self, shipped_test_top1: float) -> "Baseline":
        self.shipped_test_top1 = shipped_test_top1
        self.below = shipped_test_top1 < self.test_top1
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def baseline_batches(splits: Splits, cfg: CompressConfig) -> int:
    """The batches measure_baseline runs: BN re-estimation, then test and validation."""
    from vpns_deploy.data.batches import num_batches
    from vpns_deploy.evaluate import EVAL_BATCH

    bn = num_batches(min(cfg.bn_images, len(splits.train)), cfg.batch_size) if cfg.bn_images else 0
    val = num_batches(len(splits.val), EVAL_BATCH) if splits.val is not None else 0
    return bn + num_batches(len(splits.test), EVAL_BATCH) + val


@torch.no_grad()
def measure_baseline(dense: torch.nn.Module, loaded: LoadedModel, label_map: torch.Tensor | None, splits: Splits,
                     cfg: CompressConfig, device: torch.device, on_batch: Callable[[], None] | None = None) -> Baseline:
    """Top-1 of a copy of the dense network under the magnitude mask of cfg's mode and sparsity;
    `on_batch` is called after every batch (progress: baseline_batches of them)."""
    t0 = time.perf_counter()
    granularity = granularity_for(cfg.mode)
    net = copy.deepcopy(dense).cpu()
    granularity.prepare_network(net)  # e.g. channel: option-A shortcuts as convs, as the run's own network
    net = net.to(device)
    masks = granularity.from_config(net, cfg, torch.zeros(1, *splits.train.image_shape, device=device))
    masks.update_from_magnitude()
    model = PromptedNet(net, loaded.inputs, None, label_map).to(device)
    seen = recalibrate_bn(model, splits.train, cfg.bn_images, cfg.batch_size, device, cfg.seed,
                          policy=splits.augment, on_batch=on_batch)
    test = top1(model, splits.test, device, prompted=False, on_batch=on_batch)
    val = top1(model, splits.val, device, prompted=False, on_batch=on_batch) if splits.val is not None else None
    return Baseline(BASELINE_NAME, test, val, seen, time.perf_counter() - t0)
