"""Dense training of a built-in architecture: how the demo gets its pretrained model in seconds."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim import SGD
from torch.optim.lr_scheduler import OneCycleLR

from vpns_deploy.data.batches import num_batches
from vpns_deploy.data.dataset import Splits
from vpns_deploy.evaluate import top1
from vpns_deploy.models.registry import ArchSpec
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet
from vpns_deploy.trainer import PLAIN, StagePlan, run_stage


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0


def pretrain(arch: ArchSpec, splits: Splits, cfg: PretrainConfig, device: torch.device,
             reporter: Reporter) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(cfg.seed)
    net = arch.build(splits.num_classes).to(device)
    model = PromptedNet(net, arch.inputs, None).to(device)
    opt = SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    steps = num_batches(len(splits.train), cfg.batch_size)
    sched = OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    plan = StagePlan("train", cfg.epochs, [(opt, None)], (PLAIN,), after_step=sched.step)
    with reporter:
        run_stage(model, plan, splits, cfg.batch_size, device, cfg.seed, reporter)
    return net.eval(), top1(model, splits.test, device, prompted=False)
