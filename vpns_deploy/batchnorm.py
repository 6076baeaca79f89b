"""BatchNorm statistics re-estimated for the network as it is now (after a mask moved).

A mask changes every layer's output distribution, but the running mean/var still describe the dense
network until enough training steps have passed through them (momentum 0.1: about 20 steps to forget
90 %). A short stage never gets there, and evaluation then normalises with the wrong statistics.
Re-estimating them is forward passes only: no optimiser step, nothing learned from labels.
"""
from __future__ import annotations

import torch
from torch import nn

from vpns_deploy.data.batches import train_batches
from vpns_deploy.data.dataset import AnySet
from vpns_deploy.prompts import PromptedNet

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_bn(model: PromptedNet, data: AnySet, images: int, batch_size: int, device: torch.device,
                   seed: int, passes: tuple[bool, ...] = (False,)) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as an exact average over
    `images` un-augmented training images (momentum None), then restore each layer's momentum and the
    model's mode. `passes` says, batch by batch in turn, whether the prompt is on (training's mix of
    prompted and plain batches). Returns the number of images used (0: the network has no BatchNorm)."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns or images <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    seen = 0
    gen = torch.Generator().manual_seed(seed)
    batches = train_batches(data, batch_size, gen, device, None)
    for i, (x, _) in enumerate(batches):
        take = min(len(x), images - seen)
        model(x[:take], prompted=passes[i % len(passes)])
        seen += take
        if seen >= images:
            break
    batches.close()  # a streamed set's workers stop here
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return seen
