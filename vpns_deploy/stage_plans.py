"""The two kinds of stage every method is built from (shared/docs/VPNS.md §1, §2), as StagePlans over
trainer.run_stage: stage 1 trains scores (+ prompt), stage 2 weights (+ prompt) under a fixed mask.
Which of them a method runs, and for how long, is the method's (sparsity/methods.py)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.optim import SGD, Adam, Optimizer

from vpns_deploy.config import CompressConfig, auto_lr_scores
from vpns_deploy.distill import Distiller
from vpns_deploy.prompts import PromptedNet
from vpns_deploy.schedules import cosine, multistep
from vpns_deploy.sparsity.granularity import Granularity
from vpns_deploy.trainer import PLAIN, PROMPTED, StagePlan, epoch_batches


def trainable_weights(net: nn.Module) -> list[nn.Parameter]:
    """Trainable weights: never scores, never a frozen structural layer (ChannelCopyConv)."""
    frozen = {id(p) for m in net.modules() if getattr(m, "frozen", False) for p in m.parameters()}
    return [p for n, p in net.named_parameters() if not n.endswith("scores") and id(p) not in frozen]


def score_lr(masks: Granularity, cfg: CompressConfig, batches_per_epoch: int) -> float:
    """The stage-1 score learning rate: given, or SCORE_LR_RULE over the stage's optimiser steps
    (channel scores: their own rate, Granularity.score_lr)."""
    steps = cfg.mask_epochs * epoch_batches(batches_per_epoch, cfg.mask_fraction) * cfg.passes_per_batch
    return masks.score_lr(cfg.optim, auto_lr_scores(steps))


def _passes(model: PromptedNet) -> tuple[str, ...]:
    """With a prompt every batch runs prompted and plain (VPNS.md §1), else plain only."""
    return (PROMPTED, PLAIN) if model.prompt is not None else (PLAIN,)


def _trains_prompt(model: PromptedNet, cfg: CompressConfig, stage: str) -> bool:
    """Whether the prompt learns in this stage ("mask" or "tune"): never in the zero-prompt control
    (prompt_trainable False), else where cfg.prompt_trains_in says."""
    if model.prompt is None:
        return False
    trains = cfg.prompt_trainable and cfg.prompt_trains_in in ("both", stage)
    model.prompt.delta.requires_grad_(trains)  # a prompt frozen in this stage gets no gradient either
    return trains


def mask_stage(model: PromptedNet, masks: Granularity, cfg: CompressConfig, batches_per_epoch: int) -> StagePlan:
    """Stage 1: scores (Adam, or SGD as the paper's HYDRA) and the prompt learn; weights are frozen."""
    o, e = cfg.optim, cfg.mask_epochs
    for p in model.parameters():
        p.requires_grad_(False)
    masks.set_scores_trainable(True)
    lr = score_lr(masks, cfg, batches_per_epoch)
    opt: Optimizer = (Adam(masks.scores(), lr=lr, weight_decay=o.wd_scores) if o.score_optimizer == "adam"
                      else SGD(masks.scores(), lr=lr, momentum=o.momentum, weight_decay=o.wd_scores))
    optimizers = [(opt, cosine(opt, e))]
    passes = _passes(model)
    if _trains_prompt(model, cfg, "mask"):
        popt = Adam([model.prompt.delta], lr=o.lr_prompt_mask, weight_decay=o.wd_prompt_mask)
        optimizers.append((popt, multistep(popt, e)))
    return StagePlan(
        "mask", e, optimizers, passes, after_step=masks.update_from_scores, bn_images=cfg.bn_images,
        batches_fraction=cfg.mask_fraction,
        describe={"trains": "scores" + (" + prompt" if len(optimizers) > 1 else ""),
                  "batches_per_epoch": epoch_batches(batches_per_epoch, cfg.mask_fraction),
                  "score_optimizer": o.score_optimizer,
                  "frozen": "weights, biases, BN affine (BN running stats update)", "passes": list(passes),
                  "lr_scores": lr},
    )


def tune_stage(model: PromptedNet, masks: Granularity, cfg: CompressConfig, epochs: int,
               teacher: PromptedNet | None = None) -> StagePlan:
    """Stage 2; with a teacher (the dense network, --distill) its loss is distill.Distiller's."""
    o = cfg.optim
    masks.freeze()
    weights = trainable_weights(model.net)
    for p in weights:
        p.requires_grad_(True)
    opt = SGD(weights, lr=o.lr_weights, momentum=o.momentum, weight_decay=o.wd_tune)
    optimizers = [(opt, cosine(opt, epochs))]
    passes = _passes(model)
    if _trains_prompt(model, cfg, "tune"):
        popt = SGD([model.prompt.delta], lr=o.lr_prompt_tune, momentum=o.momentum, weight_decay=o.wd_tune)
        optimizers.append((popt, cosine(popt, epochs)))
    distiller = None
    if teacher is not None:
        if teacher.label_map is not None:  # the frozen map, known by now
            teacher.label_map.copy_(model.label_map)
        distiller = Distiller(teacher, cfg.distill_temperature, cfg.distill_alpha)
    return StagePlan(
        "tune", epochs, optimizers, passes, bn_images=cfg.bn_images,
        loss_fn=distiller.loss if distiller is not None else None,
        describe={"trains": "weights + BN affine" + (" + prompt" if len(optimizers) > 1 else ""),
                  "frozen": "scores and mask", "passes": list(passes),
                  "loss": (f"{cfg.distill_alpha:g} x T^2 x KL(dense teacher, T={cfg.distill_temperature:g}) + "
                           f"{1 - cfg.distill_alpha:g} x cross-entropy") if distiller else "cross-entropy"},
    )


@dataclass
class StagePlans:
    """sparsity.methods.PlanBuilder over one model, mask set and config: what a method composes."""

    model: PromptedNet
    masks: Granularity
    cfg: CompressConfig
    batches_per_epoch: int
    teacher: PromptedNet | None = None

    def mask_stage(self) -> StagePlan:
        return mask_stage(self.model, self.masks, self.cfg, self.batches_per_epoch)

    def tune_stage(self, epochs: int) -> StagePlan:
        return tune_stage(self.model, self.masks, self.cfg, epochs, self.teacher)
