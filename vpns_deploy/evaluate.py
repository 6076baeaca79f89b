"""Top-1 of a (prompted) network on an in-memory split, in PyTorch."""
from __future__ import annotations

import torch

from vpns_deploy.data.batches import eval_batches
from vpns_deploy.data.dataset import ImageSet
from vpns_deploy.prompts import PromptedNet

EVAL_BATCH = 500


@torch.no_grad()
def top1(model: PromptedNet, data: ImageSet, device: torch.device, prompted: bool = True) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in eval_batches(data, EVAL_BATCH, device):
        correct += int((model(x, prompted=prompted).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(data))
