"""Top-1 of a (prompted) network on a split (in memory or streamed), in PyTorch."""
from __future__ import annotations

from collections.abc import Callable

import torch

from vpns_deploy.data.batches import eval_batches
from vpns_deploy.data.dataset import AnySet
from vpns_deploy.prompts import PromptedNet

EVAL_BATCH = 500


@torch.no_grad()
def top1_pair(model: PromptedNet, data: AnySet, device: torch.device,
              with_prompt: bool = True) -> tuple[float, float | None]:
    """(top-1 without the prompt, top-1 with it or None) from ONE pass over the data: a streamed
    set is decoded once for both."""
    was_training = model.training
    model.eval()
    plain = prompted = 0
    for x, y in eval_batches(data, EVAL_BATCH, device):
        plain += int((model(x, prompted=False).argmax(1) == y).sum())
        if with_prompt:
            prompted += int((model(x, prompted=True).argmax(1) == y).sum())
    model.train(was_training)
    n = max(1, len(data))
    return plain / n, (prompted / n if with_prompt else None)


@torch.no_grad()
def top1(model: PromptedNet, data: AnySet, device: torch.device, prompted: bool = True,
         on_batch: Callable[[], None] | None = None) -> float:
    """`on_batch` is called after every batch (progress)."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in eval_batches(data, EVAL_BATCH, device):
        correct += int((model(x, prompted=prompted).argmax(1) == y).sum())
        if on_batch is not None:
            on_batch()
    model.train(was_training)
    return correct / max(1, len(data))
