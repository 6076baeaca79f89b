"""The training loop every stage shares: passes per batch, optimiser steps, per-epoch metrics."""
from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from vpns_deploy.amp import Amp
from vpns_deploy.batchnorm import recalibrate_bn
from vpns_deploy.data.batches import num_batches, train_batches
from vpns_deploy.data.sharded import sharded_train_batches
from vpns_deploy.data.dataset import AnySet, AugmentPolicy, Splits
from vpns_deploy.distributed import DistContext, average_bn_stats, set_sync_bn, sharded_top1_pair, stage_runner
from vpns_deploy.evaluate import top1_pair
from vpns_deploy.errors import UserError
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet

PROMPTED, PLAIN = "prompted", "plain"


@dataclass
class StagePlan:
    """One training stage. Each batch runs every pass in `passes`, each with its own optimiser step.

    `prompted` takes an un-augmented batch through the prompt; `plain` an augmented batch without
    it (shared/docs/VPNS.md §1). `after_step` runs after every optimiser step (mask re-selection).
    Schedulers step once per epoch: see schedules.py.
    """

    name: str
    epochs: int
    optimizers: list[tuple[Optimizer, LRScheduler | None]]  # None: constant lr
    passes: tuple[str, ...]
    after_step: Callable[[], None] | None = None
    describe: dict = field(default_factory=dict)
    # BatchNorm statistics re-estimated on this many training images after every epoch, before it is
    # evaluated (vpns_deploy/batchnorm.py); 0: the running averages training left behind
    bn_images: int = 0
    # Fraction of each epoch's batches the stage runs (stage 1: CompressConfig.mask_batches_fraction)
    batches_fraction: float = 1.0
    # (logits, x, y) -> loss; None: cross-entropy. Stage 2 with --distill: distill.Distiller.loss
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class EpochRecord:
    """One epoch's numbers. val_*: top-1 on the validation split after every epoch (None without one);
    test_*: top-1 on the test split, measured only after a stage's last epoch (None otherwise), and
    never used to choose anything."""

    stage: str
    epoch: int
    train_loss: float
    train_acc: float
    val_acc_plain: float | None
    val_acc_prompted: float | None
    train_seconds: float
    eval_seconds: float
    optimizer_steps: int
    images_seen: int
    lr: dict[str, float]
    # mean |prompt| over its region at the end of the epoch, pixel units (None: no prompt)
    prompt_mean_abs: float | None = None
    test_acc_plain: float | None = None
    test_acc_prompted: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _status(loss: float, acc: float) -> str:
    return f"loss {loss:.3f}  acc {acc:6.2%}"


def _eval_text(r: EpochRecord) -> str:
    """'  val 91.20% (prompt 91.40%)  test ...' for the epoch line; empty parts left out."""
    out = ""
    for name, plain, prompted in (("val", r.val_acc_plain, r.val_acc_prompted),
                                  ("test", r.test_acc_plain, r.test_acc_prompted)):
        if plain is not None:
            out += f"  {name} {plain:6.2%}" + (f" (prompt {prompted:6.2%})" if prompted is not None else "")
    if r.prompt_mean_abs is not None:
        out += f"  |prompt| {r.prompt_mean_abs:.4f}"
    return out


@dataclass
class StepOptions:
    """How steps run beyond one fp32 process: mixed precision (amp.py) and torchrun ranks
    (distributed.py). The default is the plain single-process fp32 step."""

    amp: Amp | None = None
    dist: DistContext | None = None
    sync_bn: bool = False


def train_step(model: nn.Module, plan: StagePlan, x: torch.Tensor, y: torch.Tensor,
               prompted: bool, amp: Amp | None = None,
               sync: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of one pass: forward, backward, step every optimiser, then after_step.
    `sync` runs between backward and step (distributed: the gradients DDP does not reduce)."""
    with amp.autocast(model) if amp is not None else contextlib.nullcontext():
        logits = model(x, prompted=prompted)
        loss = plan.loss_fn(logits, x, y) if plan.loss_fn is not None else F.cross_entropy(logits, y)
    for opt, _ in plan.optimizers:
        opt.zero_grad(set_to_none=True)
    if amp is not None:
        amp.backward(loss)
    else:
        loss.backward()
    if sync is not None:
        sync()
    if amp is not None:
        amp.step([opt for opt, _ in plan.optimizers])
    else:
        for opt, _ in plan.optimizers:
            opt.step()
    if plan.after_step is not None:
        plan.after_step()
    return loss.detach(), logits.detach()


def epoch_batches(full: int, fraction: float) -> int:
    """Batches an epoch runs: the fraction of a full one, rounded, at least one."""
    return max(1, min(full, round(full * fraction)))


def stream_generators(seed: int) -> dict[str, torch.Generator]:
    """Separate, independently shuffled streams for the two passes (the reference's two loaders)."""
    return {p: torch.Generator().manual_seed(seed * 1000 + i) for i, p in enumerate((PROMPTED, PLAIN))}


def run_stage(
    model: PromptedNet,
    plan: StagePlan,
    splits: Splits,
    batch_size: int,
    device: torch.device,
    seed: int,
    reporter: Reporter,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    gens: dict[str, torch.Generator] | None = None,
    start_epoch: int = 1,
    opts: StepOptions | None = None,
) -> list[EpochRecord]:
    """Train epochs start_epoch..plan.epochs; returns one record per epoch (validation top-1 after
    each, test top-1 after the last).

    A resumed stage passes the generators and start epoch saved in its checkpoint, so the data order
    and augmentation continue exactly where the interrupted run stopped. Under torchrun (opts.dist)
    each rank trains on its share of every global batch (data/sharded.py) through DDP.
    """
    opts = opts or StepOptions()
    runner, sync = _runner(model, plan, opts)
    gens = gens if gens is not None else stream_generators(seed)
    history: list[EpochRecord] = []
    for epoch in range(start_epoch, plan.epochs + 1):
        label = f"{plan.name} {epoch}/{plan.epochs}"
        lrs = {f"{i}": opt.param_groups[0]["lr"] for i, (opt, _) in enumerate(plan.optimizers)}
        loss_sum, correct, seen, steps, train_seconds = _train_epoch(
            model, runner, sync, plan, splits, batch_size, device, gens, reporter, label, opts,
            announce=epoch == start_epoch)
        for _, sched in plan.optimizers:
            if sched is not None:
                sched.step()
        t1 = time.perf_counter()
        evals = _evaluate_epoch(model, plan, splits, batch_size, device, seed + epoch, tests_after(plan, epoch), opts)
        record = EpochRecord(
            stage=plan.name, epoch=epoch, train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
            val_acc_plain=evals[0], val_acc_prompted=evals[1], test_acc_plain=evals[2], test_acc_prompted=evals[3],
            train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1, optimizer_steps=steps,
            images_seen=seen * len(plan.passes), lr=lrs,
            prompt_mean_abs=model.prompt.mean_abs() if model.prompt is not None else None,
        )
        history.append(record)
        reporter.line(f"{label:>10}  {_status(record.train_loss, record.train_acc)}{_eval_text(record)}"
                      f"  {train_seconds:6.1f}s")
        if on_epoch is not None:
            on_epoch(record)
    if opts.sync_bn:
        set_sync_bn(model, False)
    return history


def _train_epoch(model: PromptedNet, runner: nn.Module, sync: Callable[[], None] | None, plan: StagePlan,
                 splits: Splits, batch_size: int, device: torch.device, gens: dict[str, torch.Generator],
                 reporter: Reporter, label: str, opts: StepOptions,
                 announce: bool = False) -> tuple[float, int, int, int, float]:
    """One epoch of optimiser steps (every pass per batch): (loss sum, correct, seen) of the last pass,
    whose metrics are the ones logged, the optimiser steps and the seconds spent stepping. `announce`:
    the stage's first epoch says when it starts, with its estimate (logs)."""
    model.train()
    train = splits.train
    steps_per_epoch = epoch_batches(num_batches(len(train), batch_size), plan.batches_fraction)
    # Streamed sets: the passes' loaders share the decoding workers.
    workers = max(1, getattr(train, "workers", 0) // len(plan.passes)) if getattr(train, "workers", 0) else 0
    streams = {p: _batches(train, batch_size, gens[p], device, None if p == PROMPTED else splits.augment,
                           workers, opts.dist) for p in plan.passes}
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    with reporter.task(label, steps_per_epoch, min(batch_size, len(train)) * len(plan.passes),
                       announce=announce) as bar:
        for _ in range(steps_per_epoch):
            for p in plan.passes:
                x, y = next(streams[p])
                loss, logits = train_step(runner, plan, x, y, p == PROMPTED, opts.amp, sync)
                steps += 1
                if not torch.isfinite(loss):  # stop before a NaN reaches the epoch's checkpoint
                    raise UserError(
                        f"training diverged: the loss became {loss.item()} in {label} (step {steps}); the "
                        "checkpoint of the last finished epoch, if any, is kept",
                        "lower the learning rates, or check the model's weights for NaN/inf",
                    )
                if p == plan.passes[-1]:  # the logged train metrics come from the last pass
                    loss_sum += loss.item() * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
            bar.advance(_status(loss_sum / max(seen, 1), correct / max(seen, 1)))
    for stream in streams.values():
        stream.close()  # stops a streamed set's workers
    return loss_sum, correct, seen, steps, time.perf_counter() - t0


def tests_after(plan: StagePlan, epoch: int) -> bool:
    """The test split is measured after a stage's last epoch, unless the stage trains less than one
    epoch in all (channel mode's one-batch stage 1): that mask only says which channels stage 2 trains,
    and its test top-1 cost 5 of a 33-minute EfficientNet-Lite0 run (10,000 images twice, 128 px)."""
    return epoch == plan.epochs and plan.epochs * plan.batches_fraction >= 1


def _evaluate_epoch(model: PromptedNet, plan: StagePlan, splits: Splits, batch_size: int, device: torch.device,
                    bn_seed: int, last: bool, opts: StepOptions) -> tuple[float | None, ...]:
    """Re-estimate BN statistics, then (val plain, val prompted, test plain, test prompted); the test
    split only after a stage's last epoch, so it never steers anything."""
    has_prompt = model.prompt is not None
    recalibrate_bn(model, splits.train, plan.bn_images, batch_size, device, bn_seed,
                   tuple(p == PROMPTED for p in plan.passes), splits.augment)
    if opts.dist is not None:
        average_bn_stats(model, opts.dist.world)  # identical on every rank before evaluation and checkpoint
    top1 = top1_pair if opts.dist is None else functools.partial(sharded_top1_pair, ctx=opts.dist)
    val = top1(model, splits.val, device, has_prompt) if splits.val is not None else (None, None)
    test = top1(model, splits.test, device, has_prompt) if last else (None, None)
    return (*val, *test)


def _runner(model: PromptedNet, plan: StagePlan, opts: StepOptions) -> tuple[nn.Module, Callable[[], None] | None]:
    """The module a stage's forward runs and the extra gradient reduction: the model itself and none
    for a single process; under torchrun a DDP wrapper made for this stage's trainable parameters."""
    if opts.dist is None:
        return model, None
    params = [p for opt, _ in plan.optimizers for g in opt.param_groups for p in g["params"]]
    return stage_runner(model, params, opts.dist, opts.sync_bn)


def _batches(train: AnySet, batch_size: int, gen: torch.Generator, device: torch.device,
             policy: AugmentPolicy | None, workers: int, ctx: DistContext | None
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of one pass's stream: all of it (single process) or this rank's share (torchrun)."""
    if ctx is None:
        return train_batches(train, batch_size, gen, device, policy, workers)
    return sharded_train_batches(train, batch_size, gen, device, policy, workers, ctx.world, ctx.rank)
