"""VPNs and its baselines as stage plans over the shared training loop (shared/docs/VPNS.md §1, §2)."""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.optim import SGD, Adam

from vpns_deploy.channels import ChannelMaskSet
from vpns_deploy.config import FIXED_MASK_METHODS, CompressConfig, auto_lr_scores, default_pad, parse_mode
from vpns_deploy.data.batches import num_batches
from vpns_deploy.data.dataset import Splits
from vpns_deploy.distill import Distiller
from vpns_deploy.distributed import identical_on_ranks
from vpns_deploy.heads import set_label_map
from vpns_deploy.masks import MaskSet
from vpns_deploy.models.cifar_resnet import shortcuts_as_convs
from vpns_deploy.models.checkpoint import LoadedModel
from vpns_deploy.progress import Reporter
from vpns_deploy.schedules import cosine, multistep
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt
from vpns_deploy.trainer import PLAIN, PROMPTED, EpochRecord, StagePlan, StepOptions, run_stage, stream_generators


Masks = MaskSet | ChannelMaskSet


@dataclass
class CompressResult:
    model: PromptedNet  # masked network (+ prompt), still with scores
    masks: Masks
    prompt_spec: PromptSpec | None
    history: list[EpochRecord] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_plans: dict[str, dict] = field(default_factory=dict)
    label_map: dict | None = None  # --head map: heads.label_map_record of the frozen mapping
    rank_checksums: dict[str, list[str]] = field(default_factory=dict)  # torchrun: per stage, per rank


def build_prompt_spec(cfg: CompressConfig, image_shape: tuple[int, int, int]) -> PromptSpec:
    c, h, w = image_shape
    return PromptSpec(cfg.prompt, c, (h, w), cfg.pad if cfg.pad is not None else default_pad(min(h, w)))


def attach_masks(net: nn.Module, cfg: CompressConfig, example: torch.Tensor) -> Masks:
    """Make net maskable for cfg.mode, in place (net must already sit on its device)."""
    kind, pattern = parse_mode(cfg.mode)
    if kind == "channel":
        return ChannelMaskSet(net, example, None if cfg.speedup else cfg.sparsity, cfg.speedup,
                              cfg.channel_min_keep, cfg.channel_round_to, cfg.channel_init, cfg.channel_widths)
    return MaskSet.attach(net, cfg.sparsity, pattern, cfg.allow_empty_layers)


def _weights(net: nn.Module) -> list[nn.Parameter]:
    """Trainable weights: never scores, never a frozen structural layer (ChannelCopyConv)."""
    frozen = {id(p) for m in net.modules() if getattr(m, "frozen", False) for p in m.parameters()}
    return [p for n, p in net.named_parameters() if not n.endswith("scores") and id(p) not in frozen]


def score_lr(masks: Masks, cfg: CompressConfig, batches_per_epoch: int) -> float:
    """The stage-1 score learning rate: given, or SCORE_LR_RULE over the stage's optimiser steps."""
    o = cfg.optim
    if isinstance(masks, ChannelMaskSet):
        return o.lr_channel_scores
    if o.lr_scores is not None:
        return o.lr_scores
    return auto_lr_scores(cfg.epochs_mask * batches_per_epoch * cfg.passes_per_batch)


def _mask_stage(model: PromptedNet, masks: Masks, cfg: CompressConfig, batches_per_epoch: int) -> StagePlan:
    o, e = cfg.optim, cfg.epochs_mask
    for p in model.parameters():
        p.requires_grad_(False)
    masks.set_scores_trainable(True)
    lr = score_lr(masks, cfg, batches_per_epoch)
    opt = (Adam(masks.scores(), lr=lr, weight_decay=o.wd_scores) if o.score_optimizer == "adam"
           else SGD(masks.scores(), lr=lr, momentum=o.momentum, weight_decay=o.wd_scores))
    optimizers = [(opt, cosine(opt, e))]
    passes: tuple[str, ...] = (PLAIN,)
    if model.prompt is not None:
        passes = (PROMPTED, PLAIN)
    if model.prompt is not None and cfg.prompt_trainable:
        model.prompt.delta.requires_grad_(True)
        popt = Adam([model.prompt.delta], lr=o.lr_prompt_mask, weight_decay=o.wd_prompt_mask)
        optimizers.append((popt, multistep(popt, e)))
    return StagePlan(
        "mask", e, optimizers, passes, after_step=masks.update_from_scores, bn_images=cfg.bn_images,
        describe={"trains": "scores" + (" + prompt" if len(optimizers) > 1 else ""),
                  "score_optimizer": o.score_optimizer,
                  "frozen": "weights, biases, BN affine (BN running stats update)", "passes": list(passes),
                  "lr_scores": lr},
    )


def _tune_stage(model: PromptedNet, masks: Masks, cfg: CompressConfig, epochs: int,
                teacher: PromptedNet | None = None) -> StagePlan:
    """Stage 2; with a teacher (the dense network, --distill) its loss is distill.Distiller's."""
    o = cfg.optim
    masks.set_scores_trainable(False)
    masks.zero_pruned_weights()
    weights = _weights(model.net)
    for p in weights:
        p.requires_grad_(True)
    opt = SGD(weights, lr=o.lr_weights, momentum=o.momentum, weight_decay=o.wd_tune)
    optimizers = [(opt, cosine(opt, epochs))]
    passes: tuple[str, ...] = (PLAIN,)
    if model.prompt is not None:
        passes = (PROMPTED, PLAIN)
    if model.prompt is not None and cfg.prompt_trainable:
        model.prompt.delta.requires_grad_(True)
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


def dense_finetune(
    loaded: LoadedModel, splits: Splits, cfg: CompressConfig, epochs: int, device: torch.device,
    reporter: Reporter,
) -> list[EpochRecord]:
    """The upper reference: every weight trained with stage 2's optimiser, nothing pruned."""
    torch.manual_seed(cfg.seed)
    net = loaded.net.to(device, memory_format=torch.channels_last)
    model = PromptedNet(net, loaded.inputs, None).to(device)
    o = cfg.optim
    opt = SGD(net.parameters(), lr=o.lr_weights, momentum=o.momentum, weight_decay=o.wd_tune)
    plan = StagePlan("finetune", epochs, [(opt, cosine(opt, epochs))], (PLAIN,), bn_images=cfg.bn_images,
                     describe={"trains": "all weights", "passes": [PLAIN]})
    return run_stage(model, plan, splits, cfg.batch_size, device, cfg.seed, reporter)


class TrainingCheckpoint(Protocol):
    """Where compress keeps its per-epoch state; pipelines/ supplies a file-backed one."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


def _stage_factories(model: PromptedNet, masks: Masks, cfg: CompressConfig, batches_per_epoch: int,
                     teacher: PromptedNet | None = None) -> list[Callable[[], StagePlan]]:
    stages: list[Callable[[], StagePlan]] = []
    if cfg.method not in FIXED_MASK_METHODS:
        stages.append(lambda: _mask_stage(model, masks, cfg, batches_per_epoch))
    if cfg.tune_epochs_effective > 0:
        stages.append(lambda: _tune_stage(model, masks, cfg, cfg.tune_epochs_effective, teacher))
    return stages


def compress(
    loaded: LoadedModel,
    splits: Splits,
    cfg: CompressConfig,
    device: torch.device,
    reporter: Reporter,
    checkpoint: TrainingCheckpoint | None = None,
    opts: StepOptions | None = None,
) -> CompressResult:
    """Run the method's stages; with a checkpoint, save after every epoch and resume from it.

    A resumed run restores the network (weights, scores, masks, BN statistics), prompt, optimiser
    and scheduler states, data-stream generators and the global RNG, so on the CPU it ends
    bit-identical to an uninterrupted run.
    """
    torch.manual_seed(cfg.seed)
    if cfg.mode == "channel":
        shortcuts_as_convs(loaded.net)  # option-A shortcuts as 0/1 convs, so groups come out right
    net = loaded.net.to(device, memory_format=torch.channels_last)
    saved = checkpoint.load() if checkpoint is not None else None
    dense_map = None
    if cfg.head == "map" and cfg.label_map_on == "dense" and saved is None:  # before any mask exists
        dense_view = PromptedNet(net, loaded.inputs, None, torch.arange(splits.num_classes)).to(device)
        dense_map = set_label_map(dense_view, splits, cfg, device, reporter)
    placeholder = torch.arange(splits.num_classes) if cfg.head == "map" else None
    teacher = (PromptedNet(copy.deepcopy(net), loaded.inputs, None, placeholder).to(device).eval()
               if cfg.distill else None)  # the dense network, before any mask
    example = torch.zeros(1, *splits.train.image_shape, device=device)
    masks = attach_masks(net, cfg, example)  # masks and scores take the weights' (channels-last) layout
    prompt_spec = build_prompt_spec(cfg, splits.train.image_shape) if cfg.uses_prompt else None
    prompt = VisualPrompt(prompt_spec).to(device) if prompt_spec is not None else None
    # --head map: the label map's buffer exists from the start (a resumed run loads it with the state)
    model = PromptedNet(net, loaded.inputs, prompt, placeholder).to(device)
    result = CompressResult(model, masks, prompt_spec)

    if saved is not None:
        model.load_state_dict(saved["model"])
        if isinstance(masks, nn.Module):
            masks.load_state_dict(saved["masks"])
        result.history = [EpochRecord(**r) for r in saved["history"]]
        result.stage_seconds = dict(saved["stage_seconds"])
        result.stage_plans = dict(saved["stage_plans"])
        result.label_map = saved.get("label_map")
        reporter.line(f"resuming after {saved['stage']} epoch {saved['epoch']} (checkpoint)")
    elif cfg.method == "magnitude":
        masks.update_from_magnitude()
    elif cfg.method == "tp-groupnorm":
        masks.update_from_group_norm()
    else:
        masks.init_scores_scaled()
        masks.update_from_scores()
    for note in getattr(masks, "notes", list)():  # groups kept whole, a target out of reach
        reporter.line(note)
    if dense_map is not None:  # label_map_on "dense": computed before the mask, frozen from here on
        model.label_map.copy_(torch.tensor(dense_map["seq"], device=device))
        result.label_map = {**dense_map, "computed_on": "dense network before the initial mask, zero prompt, "
                            "augmented training set, eval mode (label_map_on = dense)"}
    elif cfg.head == "map" and saved is None:  # right after the initial mask, frozen from here on (VPNS.md §4)
        result.label_map = set_label_map(model, splits, cfg, device, reporter)

    batches = num_batches(len(splits.train), cfg.batch_size)
    for make_plan in _stage_factories(model, masks, cfg, batches, teacher):
        plan = make_plan()  # also sets what trains in this stage
        gens = stream_generators(cfg.seed)
        start = 1
        if saved is not None:
            done = [r.stage for r in result.history]
            if plan.name in done and saved["stage"] != plan.name:
                continue  # finished before the interruption
            if saved["stage"] == plan.name:
                for (opt, sched), st in zip(plan.optimizers, saved["optimizers"]):
                    opt.load_state_dict(st["optimizer"])
                    if sched is not None:
                        sched.load_state_dict(st["scheduler"])
                for name, g in gens.items():
                    g.set_state(saved["generators"][name])
                torch.set_rng_state(saved["torch_rng"])
                if opts is not None and opts.amp is not None:
                    opts.amp.load_state_dict(saved.get("amp_scaler"))
                start = saved["epoch"] + 1
        result.stage_plans[plan.name] = {"epochs": plan.epochs, **plan.describe}
        t0, before = time.perf_counter(), result.stage_seconds.get(plan.name, 0.0)

        def on_epoch(record: EpochRecord, plan: StagePlan = plan, gens=gens, t0=t0, before=before) -> None:
            result.history.append(record)
            result.stage_seconds[plan.name] = before + time.perf_counter() - t0
            if checkpoint is not None:
                scaler = opts.amp.state_dict() if opts is not None and opts.amp is not None else None
                checkpoint.save({**({"amp_scaler": scaler} if scaler else {}),
                    "stage": plan.name, "epoch": record.epoch,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "masks": ({k: v.detach().cpu() for k, v in masks.state_dict().items()}
                              if isinstance(masks, nn.Module) else None),
                    "optimizers": [{"optimizer": o.state_dict(), "scheduler": sc.state_dict() if sc else None}
                                   for o, sc in plan.optimizers],
                    "generators": {n: g.get_state() for n, g in gens.items()},
                    "torch_rng": torch.get_rng_state(),
                    "history": [r.to_dict() for r in result.history],
                    "stage_seconds": result.stage_seconds, "stage_plans": result.stage_plans,
                    "label_map": result.label_map,
                })

        run_stage(model, plan, splits, cfg.batch_size, device, cfg.seed, reporter, on_epoch, gens, start, opts)
        if opts is not None and opts.dist is not None:
            state = {**model.state_dict(), **(masks.state_dict() if isinstance(masks, nn.Module) else {})}
            result.rank_checksums[plan.name] = identical_on_ranks(state, plan.name, opts.dist)
    if cfg.tune_epochs_effective == 0:
        masks.set_scores_trainable(False)
        masks.zero_pruned_weights()
    model.eval()
    return result
