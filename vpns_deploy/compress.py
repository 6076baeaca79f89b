"""Compression: a registered method (sparsity/methods.py) over a registered granularity
(sparsity/modes.py), its stage plans (stage_plans.py) run by the shared training loop, with a
checkpoint after every epoch (shared/docs/VPNS.md §1, §2)."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.optim import SGD

from vpns_deploy.config import CompressConfig, default_pad
from vpns_deploy.data.batches import num_batches
from vpns_deploy.data.dataset import Splits
from vpns_deploy.distributed import DistContext, broadcast_state, identical_on_ranks, rank0_alone
from vpns_deploy.heads import label_map_line, set_label_map
from vpns_deploy.latency_budget import MAX_CANDIDATES, TOLERANCE, SpeedupProbe, search
from vpns_deploy.models.checkpoint import LoadedModel
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet, PromptSpec, VisualPrompt
from vpns_deploy.schedules import cosine
from vpns_deploy.sparsity.granularity import Granularity
from vpns_deploy.sparsity.methods import get_method
from vpns_deploy.sparsity.modes import granularity_for
from vpns_deploy.stage_plans import StagePlans
from vpns_deploy.trainer import PLAIN, EpochRecord, StagePlan, StepOptions, run_stage, stream_generators

@dataclass
class CompressResult:
    model: PromptedNet  # masked network (+ prompt), still with scores
    masks: Granularity  # any registered granularity's mask set
    prompt_spec: PromptSpec | None
    history: list[EpochRecord] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_plans: dict[str, dict] = field(default_factory=dict)
    label_map: dict | None = None  # --head map: heads.label_map_record of the frozen mapping
    rank_checksums: dict[str, list[str]] = field(default_factory=dict)  # torchrun: per stage, per rank
    latency_budget: dict | None = None  # --budget-by latency: latency_budget.LatencyBudget.to_dict(), verified


def build_prompt_spec(cfg: CompressConfig, image_shape: tuple[int, int, int]) -> PromptSpec:
    c, h, w = image_shape
    return PromptSpec(cfg.prompt, c, (h, w), cfg.pad if cfg.pad is not None else default_pad(min(h, w)))


def attach_masks(net: nn.Module, cfg: CompressConfig, example: torch.Tensor) -> Granularity:
    """Make net maskable for cfg.mode, in place (net must already sit on its device)."""
    return granularity_for(cfg.mode).from_config(net, cfg, example)


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


@dataclass
class _StageRunner:
    """Runs one stage plan after another, resuming a saved run and saving after every epoch."""

    result: CompressResult
    splits: Splits
    cfg: CompressConfig
    device: torch.device
    reporter: Reporter
    checkpoint: TrainingCheckpoint | None
    opts: StepOptions | None
    saved: dict | None

    def run(self, plan: StagePlan) -> None:
        result, cfg = self.result, self.cfg
        gens = stream_generators(cfg.seed)
        start = 1
        if self.saved is not None:
            if plan.name in [r.stage for r in result.history] and self.saved["stage"] != plan.name:
                return  # finished before the interruption
            if self.saved["stage"] == plan.name:
                start = self._resume(plan, gens)
        result.stage_plans[plan.name] = {"epochs": plan.epochs, **plan.describe}
        t0, before = time.perf_counter(), result.stage_seconds.get(plan.name, 0.0)

        def on_epoch(record: EpochRecord) -> None:
            result.history.append(record)
            result.stage_seconds[plan.name] = before + time.perf_counter() - t0
            if self.checkpoint is not None:
                self.checkpoint.save(self._state(plan, record, gens))

        run_stage(result.model, plan, self.splits, cfg.batch_size, self.device, cfg.seed, self.reporter, on_epoch,
                  gens, start, self.opts)
        if self.opts is not None and self.opts.dist is not None:
            state = {**result.model.state_dict(), **result.masks.mask_state()}
            result.rank_checksums[plan.name] = identical_on_ranks(state, plan.name, self.opts.dist)

    def _resume(self, plan: StagePlan, gens: dict) -> int:
        """Restore the interrupted stage's optimisers, schedulers, data streams and RNG; its next epoch."""
        saved, amp = self.saved, self.opts.amp if self.opts is not None else None
        for (opt, sched), st in zip(plan.optimizers, saved["optimizers"]):
            opt.load_state_dict(st["optimizer"])
            if sched is not None:
                sched.load_state_dict(st["scheduler"])
        for name, g in gens.items():
            g.set_state(saved["generators"][name])
        torch.set_rng_state(saved["torch_rng"])
        if amp is not None:
            amp.load_state_dict(saved.get("amp_scaler"))
        return saved["epoch"] + 1

    def _state(self, plan: StagePlan, record: EpochRecord, gens: dict) -> dict:
        """Everything a resumed run needs to end bit-identical to an uninterrupted one (on the CPU)."""
        result = self.result
        scaler = self.opts.amp.state_dict() if self.opts is not None and self.opts.amp is not None else None
        masks = {k: v.detach().cpu() for k, v in result.masks.mask_state().items()}
        return {**({"amp_scaler": scaler} if scaler else {}),
                "stage": plan.name, "epoch": record.epoch,
                "model": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                "masks": masks or None,
                "optimizers": [{"optimizer": o.state_dict(), "scheduler": sc.state_dict() if sc else None}
                               for o, sc in plan.optimizers],
                "generators": {n: g.get_state() for n, g in gens.items()},
                "torch_rng": torch.get_rng_state(),
                "history": [r.to_dict() for r in result.history],
                "stage_seconds": result.stage_seconds, "stage_plans": result.stage_plans,
                "label_map": result.label_map, "latency_budget": result.latency_budget}


def _restore(result: CompressResult, saved: dict, reporter: Reporter) -> None:
    """A checkpoint's network, masks and records back into result (the stage runner does the rest)."""
    result.model.load_state_dict(saved["model"])
    if saved["masks"] is not None:
        result.masks.load_mask_state(saved["masks"])
    result.history = [EpochRecord(**r) for r in saved["history"]]
    result.stage_seconds = dict(saved["stage_seconds"])
    result.stage_plans = dict(saved["stage_plans"])
    result.label_map = saved.get("label_map")
    result.latency_budget = saved.get("latency_budget")
    if result.latency_budget is not None:  # later selections (widths "learned") keep the chosen budget
        result.masks.retarget_kept(result.latency_budget["macs_ratio"])
    reporter.line(f"resuming after {saved['stage']} epoch {saved['epoch']} (checkpoint)")


def compress(
    loaded: LoadedModel,
    splits: Splits,
    cfg: CompressConfig,
    device: torch.device,
    reporter: Reporter,
    checkpoint: TrainingCheckpoint | None = None,
    opts: StepOptions | None = None,
    probe: SpeedupProbe | None = None,
    given_map: dict | None = None,
) -> CompressResult:
    """Run the method's stages; with a checkpoint, save after every epoch and resume from it.

    A resumed run restores the network (weights, scores, masks, BN statistics), prompt, optimiser
    and scheduler states, data-stream generators and the global RNG, so on the CPU it ends
    bit-identical to an uninterrupted run. With a probe (channel mode, --budget-by latency) the
    channel budget is the MACs reduction whose compacted network meets cfg.speedup on the probe's runtime.
    `given_map`: the frequency label map the dense reference computed on the network as given (the same
    function before any mask, with the same draws), reused rather than computed a second time.
    """
    torch.manual_seed(cfg.seed)
    method, granularity = get_method(cfg.method), granularity_for(cfg.mode)
    granularity.prepare_network(loaded.net)  # e.g. channel: option-A shortcuts as 0/1 convs
    net = loaded.net.to(device, memory_format=torch.channels_last)
    saved = checkpoint.load() if checkpoint is not None else None
    dense_map = None
    if cfg.head == "map" and cfg.label_map_on == "dense" and saved is None:  # before any mask exists
        if given_map is not None:
            dense_map = given_map
            reporter.line(label_map_line(given_map))
        else:
            dense_view = PromptedNet(net, loaded.inputs, None, torch.arange(splits.num_classes)).to(device)
            dense_map = set_label_map(dense_view, splits, cfg, device, reporter)
    placeholder = torch.arange(splits.num_classes) if cfg.head == "map" else None
    teacher = (PromptedNet(copy.deepcopy(net), loaded.inputs, None, placeholder).to(device).eval()
               if cfg.distill else None)  # the dense network, before any mask
    example = torch.zeros(1, *splits.train.image_shape, device=device)
    masks = granularity.from_config(net, cfg, example)  # masks and scores take the weights' (channels-last) layout
    prompt_spec = build_prompt_spec(cfg, splits.train.image_shape) if method.uses_prompt else None
    prompt = VisualPrompt(prompt_spec).to(device) if prompt_spec is not None else None
    # --head map: the label map's buffer exists from the start (a resumed run loads it with the state)
    model = PromptedNet(net, loaded.inputs, prompt, placeholder).to(device)
    result = CompressResult(model, masks, prompt_spec)
    if saved is not None:
        _restore(result, saved, reporter)
    else:
        method.start(masks)
        ctx = opts.dist if opts is not None else None
        if probe is not None or (cfg.latency_budget and ctx is not None):  # under torchrun only rank 0 has one
            result.latency_budget = latency_target(net, masks, method, cfg, probe, reporter, ctx)
    for note in masks.notes():  # groups kept whole, a target out of reach
        reporter.line(note)
    if dense_map is not None:  # label_map_on "dense": computed before the mask, frozen from here on
        model.label_map.copy_(torch.tensor(dense_map["seq"], device=device))
        result.label_map = {**dense_map, "computed_on": "dense network before the initial mask, zero prompt, "
                            "augmented training set, eval mode (label_map_on = dense)"}
    elif cfg.head == "map" and saved is None:  # right after the initial mask, frozen from here on (VPNS.md §4)
        result.label_map = set_label_map(model, splits, cfg, device, reporter)

    plans = StagePlans(model, masks, cfg, num_batches(len(splits.train), cfg.batch_size), teacher)
    runner = _StageRunner(result, splits, cfg, device, reporter, checkpoint, opts, saved)
    for make_plan in method.stage_plans(plans, cfg):
        runner.run(make_plan())  # making the plan also sets what trains in this stage
    if method.tune_epochs(cfg) == 0:
        masks.freeze()
    if probe is not None and result.latency_budget is not None:
        verify_latency(net, masks, probe, result.latency_budget, reporter, model.prompt)
    model.eval()
    return result


def latency_target(net: nn.Module, masks: Granularity, method, cfg: CompressConfig, probe: SpeedupProbe | None,
                   reporter: Reporter, ctx: DistContext | None = None) -> dict:
    """Search the channel budget that meets cfg.speedup measured on the probe's runtime (latency_budget.py);
    the masks are left at it, their widths fixed for the run (channel_widths "init"). Under torchrun
    rank 0 holds the probe and searches, timing alone while the others wait; they take its budget."""
    def select(ratio: float):
        masks.retarget(ratio)
        method.start(masks)
        return masks.kept_widths(), lambda: masks.baked(net)

    if ctx is None:
        return _search(net, masks, cfg, probe, reporter, select)
    if ctx.is_main and probe is None:
        raise ValueError("rank 0 searches the latency budget: it needs the probe")
    with rank0_alone():  # the other ranks wait on a socket while rank 0 exports and times
        record = _search(net, masks, cfg, probe, reporter, select) if ctx.is_main else None
    # The CPU random stream too: whatever the search drew on rank 0 (exports), every rank continues alike.
    shared = broadcast_state({"record": json.dumps(record), "rng": torch.get_rng_state()} if ctx.is_main else None,
                             ctx)
    record = json.loads(shared["record"])
    if not ctx.is_main:
        select(record["macs_ratio"])
        torch.set_rng_state(shared["rng"])
        if list(masks.kept_widths()) != record["widths"]:
            raise RuntimeError(f"rank {ctx.rank}: the latency budget's widths differ from rank 0's")
    return record


def _search(net: nn.Module, masks: Granularity, cfg: CompressConfig, probe: SpeedupProbe, reporter: Reporter,
            select) -> dict:
    t0 = time.perf_counter()
    with reporter.task("latency budget: compact, export and time candidates", MAX_CANDIDATES) as bar:
        found = search(cfg.speedup, select, probe, masks.floor_ratio(), lambda s: (bar.advance(), reporter.line(s)))
    reporter.line(found.line())
    if (busy := found.busy_line()) is not None:
        reporter.line(busy)
        probe.forget([c.widths for c in found.candidates if not c.measured.cached])
    return found.to_dict() | {"widths": list(masks.kept_widths()), "seconds": time.perf_counter() - t0}


def verify_latency(net: nn.Module, masks: Granularity, probe: SpeedupProbe, record: dict, reporter: Reporter,
                   prompt: nn.Module | None = None) -> None:
    """The network that ships, compacted, exported and timed against the dense one once more (not read
    from the cache): an independent measurement of what the search chose; recorded as record["verified"].
    With a learned prompt, also what folding it in costs (record["verified"]["with_prompt"]): only the
    compressed graph carries it, so it costs speedup; the prompt ships only where the speedup with it
    stays within the tolerance of the target (of the speedup reached, where that falls short)."""
    m = probe.measure(masks.kept_widths(), lambda: masks.baked(net), fresh=True)
    record["verified"] = {"speedup": m.speedup, "ci95": list(m.ci95), "cached": m.cached,
                          "widths_changed": list(masks.kept_widths()) != record["widths"],
                          "within_tolerance": abs(m.speedup / record["target"] - 1) <= TOLERANCE}
    where = f"on {record['probe']['runtime']} at batch {record['probe']['batch']}"
    reporter.line(f"latency check: the compacted network runs {m.speedup:.2f}x [{m.ci95[0]:.2f}, {m.ci95[1]:.2f}] "
                  f"faster than dense {where} (measured again, target {record['target']:g}x)")
    if prompt is None:
        return
    ratio, ci95 = probe.prompt_cost(lambda: masks.baked(net), copy.deepcopy(prompt).cpu().eval())
    with_prompt = m.speedup / ratio
    bar = min(record["target"], m.speedup) * (1 - TOLERANCE)
    keeps = with_prompt >= bar
    record["verified"]["with_prompt"] = {"speedup": with_prompt, "latency_ratio": ratio, "latency_ratio_ci95": list(ci95),
                                         "within_tolerance": keeps}
    reporter.line(f"latency check, prompt folded in: {ratio:.3f}x the time without it [{ci95[0]:.3f}, {ci95[1]:.3f}], "
                  f"so {with_prompt:.2f}x faster than dense"
                  + ("" if keeps else f", under {bar:.2f}x: the prompt will not ship"))
