"""What a finished compress leaves in its run directory: the networks, masks, prompt and the manifest
that records them (with the compress stage's fingerprint), plus the lines that summarise it.

Split from compress_stage.py, which orchestrates (inputs, checkpoints, training, the staged directory);
this module only turns a CompressResult into files and records."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.artifacts import DENSE_PT, MASKS_PT, MODEL_PT, PROMPT_PT
from pipelines.manifest import DataRecord, Manifest, ModelRecord, StageRecord
from pipelines.run_dir import RunDir, now, versions
from vpns_deploy.atomic import atomic_torch_save
from vpns_deploy.baseline_check import Baseline
from vpns_deploy.config import DEVIATIONS, CompressConfig
from vpns_deploy.sparsity.methods import get_method
from vpns_deploy.data import Splits, absolute_spec
from vpns_deploy.evaluate import top1_pair
from vpns_deploy.heads import head_record
from vpns_deploy.macs import count_macs, count_params
from vpns_deploy.models import InputOverrides, LoadedModel
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet, prompt_decision
from vpns_deploy.sparsity.granularity import Granularity


@dataclass
class DenseReference:
    """The dense network the run starts from, as measured before any mask: what the run is compared with."""

    net: torch.nn.Module
    top1: float
    label_map: torch.Tensor | None = None  # --head map: the dense network's own frequency label map
    label_map_record: dict | None = None
    warmup: list = field(default_factory=list)  # --head new: the head warm-up's epoch records
    baseline: Baseline | None = None  # the simplest baseline's top-1 (baseline_check), None: not measured
    # what the reference is: dense_reference.reference_record (kind, label, text, steps, fine-tune epochs)
    record: dict = field(default_factory=dict)


@dataclass
class RunInputs:
    """What the run was made from and how: recorded in the manifest as given."""

    model_path: Path
    loaded: LoadedModel
    splits: Splits
    cfg: CompressConfig
    overrides: InputOverrides
    fingerprint: str
    device: torch.device
    other: dict  # precision, distributed record, timings


def structure(cfg: CompressConfig, masks: Granularity, dense: torch.nn.Module, baked: torch.nn.Module,
              example: torch.Tensor) -> dict:
    """MACs and parameters before/after, then the granularity's own facts (groups, pattern, exempt layers)."""
    macs = {"dense": count_macs(dense, example), "compressed": count_macs(baked, example)}
    info = {"mode": cfg.mode, "macs": macs, "params": {"dense": count_params(dense), "compressed": count_params(baked)}}
    return info | masks.structure_facts(macs["dense"] / max(1, macs["compressed"]))


def _save_network(run: RunDir, name: str, net: torch.nn.Module, arch: str | None) -> None:
    # Built-in/torchvision archs: a plain state dict (safe to load). A user's pickled module stays a
    # pickle; the loader verifies its sha256 against the manifest before unpickling it.
    obj = {k: v.detach().cpu() for k, v in net.state_dict().items()} if arch else net.cpu()
    atomic_torch_save(run.file(name), obj)
    run.record(name, format="state_dict" if arch else "pickled_module")


def shipped_metrics(result, loaded: LoadedModel, splits: Splits, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The baked (masks applied) network and its final test/validation top-1 with and without the prompt."""
    baked = result.masks.baked(result.model.net).to(device).eval()
    shipped = PromptedNet(baked, loaded.inputs, result.model.prompt, result.model.label_map).to(device).eval()
    prompted = result.prompt_spec is not None
    test_plain, test_prompted = top1_pair(shipped, splits.test, device, prompted)
    val_plain, val_prompted = (top1_pair(shipped, splits.val, device, prompted) if splits.val is not None
                               else (None, None))
    return baked, {"top1_plain": test_plain, "top1_prompted": test_prompted,
                   "val_top1_plain": val_plain, "val_top1_prompted": val_prompted}


def write_run(run: RunDir, result, dense: DenseReference, given: RunInputs) -> Manifest:
    """Save the networks, masks and prompt into `run` and record them in its manifest (saved)."""
    loaded, splits, cfg = given.loaded, given.splits, given.cfg
    baked, final = shipped_metrics(result, loaded, splits, given.device)
    checked = (result.latency_budget or {}).get("verified") or {}
    decision = prompt_decision(final["val_top1_plain"], final["val_top1_prompted"], result.prompt_spec is not None,
                               checked.get("with_prompt"))
    shipped_top1 = final["top1_prompted"] if decision["fold"] else final["top1_plain"]
    baseline = dense.baseline.compare(shipped_top1).to_dict() if dense.baseline is not None else None
    _save_network(run, MODEL_PT, baked, loaded.arch)
    _save_network(run, DENSE_PT, dense.net, loaded.arch)
    atomic_torch_save(run.file(MASKS_PT), result.masks.masks())
    run.record(MASKS_PT)
    if result.model.prompt is not None:
        atomic_torch_save(run.file(PROMPT_PT), {k: v.cpu() for k, v in result.model.prompt.state_dict().items()})
        run.record(PROMPT_PT)
    example = torch.zeros(1, *splits.train.image_shape, device=given.device)
    run.manifest = Manifest(
        fingerprint=given.fingerprint, config=cfg.to_dict(), artifacts=run.artifacts, seed=cfg.seed,
        stages={"compress": StageRecord(given.fingerprint, [], list(run.artifacts))},
        model=ModelRecord(source=str(Path(given.model_path).resolve()), sha256=loaded.sha256, arch=loaded.arch,
                          num_classes=loaded.num_classes, inputs=loaded.inputs.to_dict(),
                          inputs_from=loaded.inputs_from, input_overrides=given.overrides.to_dict()),
        data=DataRecord(spec=absolute_spec(splits.spec), fingerprint=splits.fingerprint,
                        classes=splits.train.classes, image_shape=list(splits.train.image_shape),
                        details={"train_images": len(splits.train),
                                 "val_images": len(splits.val) if splits.val is not None else 0,
                                 "test_images": len(splits.test), "augment": vars(splits.augment),
                                 **splits.details}),
        prompt=result.prompt_spec.to_dict() if result.prompt_spec else None,
        method={"name": cfg.method, "description": get_method(cfg.method).description, "mode": cfg.mode, "prunable": result.masks.prunable(),
                "stages": result.stage_plans, "distill": cfg.distill, "label_mapping": result.label_map or "identity",
                "dense_label_mapping": dense.label_map_record,
                "head": head_record(cfg, baked, splits.num_classes, dense.warmup), "deviations": list(DEVIATIONS)},
        other={"created": now(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "device": str(given.device),
               "versions": versions(), **given.other},
        metrics={"dense_top1": dense.top1, "dense_reference": dense.record, "prompt_decision": decision, **final, "baseline": baseline,
                 "sparsity": result.masks.sparsity(),
                 "structure": structure(cfg, result.masks, dense.net, baked, example),
                 "target": target_record(cfg, result, dense, decision, final, given),
                 "prunable_weights": result.masks.total,
                 "per_layer": [vars(s) | {"sparsity": s.sparsity} for s in result.masks.stats()],
                 "epochs": [r.to_dict() for r in [*dense.warmup, *result.history]]},  # the head warm-up counts too
    )
    run.save()
    return run.manifest


def target_record(cfg: CompressConfig, result, dense: DenseReference, decision: dict, final: dict,
                  given: RunInputs) -> dict:
    """What the run was asked for in the user's terms and what it reached: --speedup (measured, or MACs)
    and --max-drop (validation top-1 points below the dense reference)."""
    record: dict = {"speedup": cfg.speedup, "budget_by": cfg.budget_by if cfg.speedup else None,
                    "runtime": cfg.target_runtime, "batch": cfg.target_batch, "latency": result.latency_budget}
    if cfg.max_drop is None or given.splits.val is None:
        return record | {"accuracy": None}
    net = PromptedNet(dense.net, given.loaded.inputs, None, dense.label_map).to(given.device).eval()
    dense_val = top1_pair(net, given.splits.val, given.device, False)[0]
    shipped_val = final["val_top1_prompted"] if decision["fold"] else final["val_top1_plain"]
    drop = 100 * (dense_val - shipped_val)
    return record | {"accuracy": {"max_drop": cfg.max_drop, "dense_val_top1": dense_val, "val_top1": shipped_val,
                                  "drop_points": drop, "within": drop <= cfg.max_drop}}


def target_lines(target: dict | None) -> list[str]:
    """The run against what it was asked for: the measured latency budget and the accuracy budget."""
    if not target:
        return []
    lines = []
    lat = target.get("latency")
    if lat and lat.get("measured"):
        m = lat["measured"]
        lines.append(f"target: {lat['target']:g}x on {target['runtime']} at batch {target['batch']}: "
                     f"{m['speedup']:.2f}x measured [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}] "
                     f"({'met' if lat['met'] else 'not met'}; {lat['macs_ratio']:.2f}x fewer MACs)")
    acc = target.get("accuracy")
    if acc:
        over = not acc["within"]
        lines.append(f"{'warning: ' if over else ''}accuracy budget: validation top-1 {acc['val_top1']:.2%} vs "
                     f"{acc['dense_val_top1']:.2%} dense ({-acc['drop_points']:+.2f} points), "
                     f"{'over' if over else 'within'} --max-drop {acc['max_drop']:g}"
                     + ("; this is the best point this run reached: a lower --speedup/--sparsity or more epochs "
                        "gets back within it" if over else ""))
    return lines


def summarise(m: Manifest, out: Path, reporter: Reporter) -> None:
    """The lines a finished compress prints: sparsity, MACs (channel mode), top-1, the prompt decision."""
    metrics = m.metrics
    macs = metrics["structure"]["macs"]
    shrink = (f", MACs {macs['dense'] / 1e6:.1f}M -> {macs['compressed'] / 1e6:.1f}M "
              f"({macs['dense'] / max(1, macs['compressed']):.2f}x)" if m.mode == "channel" else "")
    reporter.line(
        f"done: sparsity {metrics['sparsity']:.2%}{shrink}, top-1 {metrics['top1_plain']:.2%} without prompt"
        + (f", {metrics['top1_prompted']:.2%} with" if metrics["top1_prompted"] is not None else "")
        + f" (dense {metrics['dense_top1']:.2%}) -> {out}"
    )
    reference = metrics.get("dense_reference") or {}
    if reference.get("text"):
        reporter.line(f"dense reference: {reference['text']}")
    shipped = max(metrics["top1_plain"], metrics["top1_prompted"] or 0.0)
    if reference.get("kind") == "as-given" and shipped > metrics["dense_top1"]:
        reporter.line("the compressed model beats a dense reference that was not fine-tuned on this data; "
                      "--dense-reference finetune trains one for the same optimiser steps (a fair comparison)")
    decision = metrics["prompt_decision"]
    if m.prompt is not None:
        numbers = (f": validation top-1 {decision['val_top1_prompted']:.2%} with, {decision['val_top1_plain']:.2%} "
                   "without" if decision["split"] else "")
        if decision.get("speedup_with_prompt") is not None:
            numbers += f"{',' if numbers else ':'} {decision['speedup_with_prompt']:.2f}x faster than dense with it"
        reporter.line(f"prompt decision: {'fold it into' if decision['fold'] else 'leave it out of'} the exported "
                      f"graph{numbers} ({decision['rule']})")
    baseline = metrics.get("baseline")
    if baseline is not None:
        reporter.line(baseline_text(baseline))
    for line in target_lines(metrics.get("target")):
        reporter.line(line)


def phase_line(m: Manifest, dense_seconds: float, total_seconds: float) -> str:
    """Where this process's wall-clock went: training steps, per-epoch evaluation, the dense reference and
    baseline, the latency search, and the rest (loading and decoding data, the final evaluation, saving).
    A resumed run counts the epochs of earlier processes in training and evaluation, so "other" is omitted."""
    from vpns_deploy.progress import duration_text

    epochs = m.metrics["epochs"]
    train = sum(e["train_seconds"] for e in epochs)
    evaluation = sum(e.get("eval_seconds") or 0.0 for e in epochs)
    search = ((m.metrics.get("target") or {}).get("latency") or {}).get("seconds") or 0.0
    parts = [("training", train), ("per-epoch evaluation", evaluation),
             ("dense reference and baseline", dense_seconds), ("latency search", search)]
    rest = total_seconds - sum(s for _, s in parts)
    shown = [f"{name} {duration_text(s)}" for name, s in parts if s >= 0.5]
    if rest >= 0:
        shown.append(f"other (data, final evaluation, saving) {duration_text(rest)}")
    return f"time: {duration_text(total_seconds)} in this process: " + ", ".join(shown)


def baseline_text(baseline: dict) -> str:
    """One line: the shipped model against the simplest baseline, a warning when it is below."""
    numbers = (f"shipped model {baseline['shipped_test_top1']:.2%} vs {baseline['test_top1']:.2%} for the simplest "
               f"baseline ({baseline['name']}), test top-1")
    if not baseline["below"]:
        return numbers
    return (f"warning: {numbers}: this method fell below it at this budget; more training images or epochs, or "
            "--method magnitude (which fine-tunes that mask), may do better")
