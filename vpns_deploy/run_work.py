"""The work a compress run does, phase by phase, counted before it starts: optimiser steps and the
images that only go forward (evaluation, BatchNorm re-estimation, label maps, a teacher). With the
preflight's measured seconds per image this projects the run's length; the dense fine-tune reads its
step budget from here too, so it matches the compressed model's."""
from __future__ import annotations

from dataclasses import dataclass

from vpns_deploy.config import CompressConfig
from vpns_deploy.data.batches import num_batches
from vpns_deploy.sparsity.methods import get_method
from vpns_deploy.trainer import epoch_batches


@dataclass(frozen=True)
class Phase:
    name: str
    steps: int  # optimiser steps
    train_images: int  # images through forward + backward
    forward_images: int  # images through forward only


@dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    test: int


def _epoch_images(sizes: SplitSizes, batch: int, batches: int) -> int:
    return min(sizes.train, batches * batch)


def _stage(name: str, epochs: int, batches: int, passes: int, sizes: SplitSizes, batch: int, bn_images: int,
           evals: int, teacher: bool = False) -> Phase:
    """`epochs` of `batches` batches, `passes` steps each; after every epoch BN re-estimation and
    validation, after the last the test split (`evals` forward passes per image: 2 with a prompt)."""
    images = _epoch_images(sizes, batch, batches) * epochs
    bn = min(bn_images, sizes.train) * passes if bn_images else 0
    forward = epochs * (bn + evals * sizes.val) + evals * sizes.test + (images * passes if teacher else 0)
    return Phase(name, epochs * batches * passes, images * passes, forward)


def compressed_steps(cfg: CompressConfig, n_train: int) -> int:
    """Optimiser steps of the method's stages (warm-up excluded): the dense fine-tune's budget."""
    nb = num_batches(n_train, cfg.batch_size)
    method = get_method(cfg.method)
    mask = 0 if method.fixed_mask else cfg.mask_epochs * epoch_batches(nb, cfg.mask_fraction)
    return (mask + method.tune_epochs(cfg) * nb) * cfg.passes_per_batch


def dense_finetune_epochs(cfg: CompressConfig, n_train: int) -> int:
    """Epochs of one step per batch that come closest to the compressed model's optimiser steps."""
    return max(1, round(compressed_steps(cfg, n_train) / num_batches(n_train, cfg.batch_size)))


def run_phases(cfg: CompressConfig, sizes: SplitSizes) -> list[Phase]:
    """Every phase of a compress run in order, as compress_stage runs them."""
    b, nb = cfg.batch_size, num_batches(sizes.train, cfg.batch_size)
    method = get_method(cfg.method)
    evals = 2 if method.uses_prompt else 1
    phases = []
    if cfg.head == "new":  # only the head trains: the backbone runs forward only
        warm = _stage("head warm-up", cfg.head_warmup_epochs, nb, 1, sizes, b, 0, 1)
        phases.append(Phase(warm.name, warm.steps, 0, warm.forward_images + warm.train_images))
    if cfg.dense_reference == "finetune":
        phases.append(_stage("dense fine-tune", dense_finetune_epochs(cfg, sizes.train), nb, 1, sizes, b,
                             cfg.bn_images, 1))
    flm = sizes.train if cfg.head == "map" else 0
    phases.append(Phase("dense reference", 0, 0, sizes.test + flm))
    phases.append(Phase("baseline", 0, 0, min(cfg.bn_images, sizes.train) + sizes.test + sizes.val))
    if not method.fixed_mask:
        phases.append(_stage("mask", cfg.mask_epochs, epoch_batches(nb, cfg.mask_fraction), method.passes_per_batch,
                             sizes, b, cfg.bn_images, evals))
    if method.tune_epochs(cfg):
        phases.append(_stage("tune", method.tune_epochs(cfg), nb, method.passes_per_batch, sizes, b, cfg.bn_images,
                             evals, teacher=cfg.distill))
    phases.append(Phase("final evaluation", 0, 0, evals * (sizes.test + sizes.val)))
    return phases
