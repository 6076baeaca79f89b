"""BatchNorm statistics re-estimated for the network as it is now (after a mask moved).

A mask changes every layer's output distribution, but the running mean/var still describe the dense
network until enough training steps have passed through them (momentum 0.1: about 20 steps to forget
90 %). A short stage never gets there, and evaluation then normalises with the wrong statistics.
Re-estimating them is forward passes only: no optimiser step, nothing learned from labels.

The images are augmented as in training: the network's weights were fitted under statistics of
augmented batches, and the running averages it is evaluated with track exactly those. Measured on
Torch-Pruning's ResNet-56 channel cell (10k CIFAR-10 images, 2 fine-tune epochs, 2,000 test images;
git show 6e83c8b:docs/benchmarks.md): as trained 63.25 %, re-estimated on 2,000 augmented training images
63.55 %, on 2,000 un-augmented ones 59.00 %, on the test images themselves 58.55 %. A clean image's
statistics are not the ones the next layers learned to read (the padded random crops differ from it).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vpns_deploy.data.batches import train_batches
from vpns_deploy.data.dataset import AnySet, AugmentPolicy
from vpns_deploy.prompts import PromptedNet

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recalibrate_bn(model: PromptedNet, data: AnySet, images: int, batch_size: int, device: torch.device,
                   seed: int, passes: tuple[bool, ...] = (False,), policy: AugmentPolicy | None = None,
                   on_batch: Callable[[], None] | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as an exact average over
    `images` training images (momentum None) drawn as training draws them, then restore each layer's
    momentum and the model's mode. `passes` says, batch by batch in turn, whether the prompt is on
    (training's mix); plain batches are augmented by `policy` (training's; None: not at all), prompted
    ones never (as trainer.PROMPTED). Returns the number of images used (0: no BatchNorm)."""
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
    # as in training (trainer.PROMPTED): prompted batches un-augmented, plain ones augmented by `policy`
    streams = {on: train_batches(data, batch_size, torch.Generator().manual_seed(seed), device,
                                 None if on else policy) for on in dict.fromkeys(passes)}
    for i in range(-(-images // batch_size) * len(passes)):
        on = passes[i % len(passes)]
        x, _ = next(streams[on], (None, None))
        if x is None:
            break
        take = min(len(x), images - seen)
        model(x[:take], prompted=on)
        seen += take
        if on_batch is not None:
            on_batch()
        if seen >= images:
            break
    for stream in streams.values():
        stream.close()  # a streamed set's workers stop here
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return seen
