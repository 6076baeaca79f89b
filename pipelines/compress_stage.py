"""Stage `compress`: load model and data, run the method, write the run directory in one piece."""
from __future__ import annotations

import contextlib
import copy
import sys
import time
from pathlib import Path

import torch

from vpns_deploy.atomic import atomic_torch_save
from pipelines.artifacts import CHECKPOINT, DENSE_PT, MASKS_PT, MODEL_PT, PROMPT_PT
from pipelines.checkpoint import FileCheckpoint, fingerprint
from pipelines.manifest import DataRecord, Manifest, ModelRecord, run_fingerprint
from pipelines.run_dir import RunDir, check_out, now, partial_path, staged_directory, versions
from pipelines.rank_checkpoint import RankCheckpoint, distributed_record, silent_reporter
from vpns_deploy.amp import Amp, resolve_amp, setup_cuda_speed
from vpns_deploy.compress import compress
from vpns_deploy.distributed import DistContext, session
from vpns_deploy.trainer import StepOptions
from vpns_deploy.config import DEVIATIONS, CompressConfig, parse_mode
from vpns_deploy.macs import count_macs, count_params
from vpns_deploy.data import Splits, absolute_spec, build_splits, read_catalog
from vpns_deploy.device import resolve_device
from vpns_deploy.errors import UserError
from vpns_deploy.evaluate import top1, top1_pair
from vpns_deploy.models import InputOverrides, LoadedModel, load_model
from vpns_deploy.progress import Reporter
from vpns_deploy.heads import dense_label_map, head_record, prepare_head, warm_up_head
from vpns_deploy.prompts import PromptedNet, prompt_decision

PRUNABLE_TEXT = {
    "unstructured": "every Conv2d and Linear weight (stem and classifier included); BN and biases never",
    "channel": "output channels of every coupled channel group found by torch-pruning (residual streams "
               "included); the classifier's outputs never",
    "nm": "every Conv2d and Linear weight whose layer's input channels divide by M; others stay dense",
}


def _structure(cfg: CompressConfig, masks, dense: torch.nn.Module, baked: torch.nn.Module,
               example: torch.Tensor) -> dict:
    """Mode-specific facts: MACs and parameters before/after, groups or exempt layers."""
    kind, pattern = parse_mode(cfg.mode)
    info: dict = {
        "mode": cfg.mode,
        "macs": {"dense": count_macs(dense, example), "compressed": count_macs(baked, example)},
        "params": {"dense": count_params(dense), "compressed": count_params(baked)},
    }
    if kind == "channel":
        info["groups"] = [{"root": g.root, "channels": g.size, "kept": int(masks.group_mask(i).sum())}
                          for i, g in enumerate(masks.groups)]
        info["speedup_target"] = cfg.speedup
        info["macs_reduction"] = info["macs"]["dense"] / max(1, info["macs"]["compressed"])
        info["speedup_reached"] = info["macs_reduction"] if cfg.speedup else None
        info["kept_whole"] = [{"reason": r, "roots": roots} for r, roots in masks.plan.refused.items()]
        info["notes"] = masks.notes()
    if pattern is not None:
        info["pattern"] = list(pattern)
        info["exempt"] = [vars(e) for e in masks.exempt]
    return info


def _data_text(splits: Splits) -> str:
    d = splits.details
    size = f"{d['input_size']} px" if d.get("input_size") else "own size"
    where = "in RAM" if splits.storage == "memory" else f"streamed, {d.get('workers', 0)} workers"
    return f"{size}, {where}"


def prepare_inputs(
    model_path: Path, arch: str | None, data_spec: str, cfg: CompressConfig,
    num_classes: int | None = None, trust_pickle: bool = False, inputs: InputOverrides | None = None,
) -> tuple[LoadedModel, Splits]:
    """Everything that can be wrong with the inputs is found here, before any file is written.

    The data's class list is read first (cheap: no pixels decoded), then the model is loaded, then the
    splits are built at the model's input (channels, size, interpolation, crop): grayscale data feeds
    a 3-channel model and colour data a 1-channel one."""
    catalog = read_catalog(data_spec)
    if cfg.head == "keep" and num_classes is not None and num_classes != catalog.num_classes:
        raise UserError(
            f"class-count mismatch: --num-classes {num_classes} but the data has {catalog.num_classes} classes",
            "leave --num-classes out or pass matching data (--head map or --head new use a head of another size)",
        )
    if cfg.train_subset is not None and cfg.train_subset < catalog.num_classes:
        raise UserError(f"--train-subset {cfg.train_subset} is fewer images than the data's {catalog.num_classes} "
                        "classes (the subset is class-balanced)",
                        f"pass --train-subset {catalog.num_classes} or more, or leave it out")
    loaded = load_model(model_path, arch, catalog.num_classes, trust_pickle, inputs=inputs, head=cfg.head)
    broken = next((n for n, t in [*loaded.net.named_parameters(), *loaded.net.named_buffers()]
                   if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if broken is not None:
        raise UserError(f"{model_path} holds NaN or infinite values (in {broken}): nothing can be learned from them",
                        "pass a checkpoint saved before training diverged")
    splits = build_splits(catalog, loaded.inputs, val_fraction=cfg.val_fraction, train_subset=cfg.train_subset,
                          test_subset=cfg.test_subset, seed=cfg.seed, workers=cfg.workers,
                          memory_budget=cfg.memory_budget)
    prepare_head(loaded, cfg, splits.num_classes, num_classes)  # --head: checks; `new` puts the fresh head in
    return loaded, splits


def _save_network(run: RunDir, name: str, net: torch.nn.Module, arch: str | None) -> None:
    # Built-in/torchvision archs: a plain state dict (safe to load). A user's pickled module stays a
    # pickle; the loader verifies its sha256 against the manifest before unpickling it.
    obj = {k: v.detach().cpu() for k, v in net.state_dict().items()} if arch else net.cpu()
    atomic_torch_save(run.file(name), obj)
    run.record(name, format="state_dict" if arch else "pickled_module")


def run_compress(
    model_path: Path, arch: str | None, data_spec: str, cfg: CompressConfig, out: Path,
    overwrite: bool = False, num_classes: int | None = None, trust_pickle: bool = False,
    reporter: Reporter | None = None, inputs: InputOverrides | None = None,
) -> Path:
    """Under torchrun every rank trains; rank 0 alone writes the run directory, checkpoints and progress."""
    reporter = reporter or Reporter()
    device = resolve_device(cfg.device)
    with session(device, cfg.batch_size, cfg.sync_bn) as ctx:
        if ctx is not None and not ctx.is_main:
            reporter = silent_reporter()
        return _run_compress(model_path, arch, data_spec, cfg, Path(out), overwrite, num_classes, trust_pickle,
                             reporter, inputs or InputOverrides(), ctx.device if ctx else device, ctx)


def _run_compress(
    model_path: Path, arch: str | None, data_spec: str, cfg: CompressConfig, out: Path, overwrite: bool,
    num_classes: int | None, trust_pickle: bool, reporter: Reporter, inputs: InputOverrides, device: torch.device,
    ctx: DistContext | None,
) -> Path:
    t_start = time.perf_counter()
    main = ctx is None or ctx.is_main
    if main:
        check_out(out, overwrite)  # before any work: '.', a folder or file that is not a run, an existing run
    amp = Amp(resolve_amp(cfg.amp, device), device.type)
    setup_cuda_speed(device)
    loaded, splits = prepare_inputs(model_path, arch, data_spec, cfg, num_classes, trust_pickle, inputs)
    warmup = warm_up_head(loaded, splits, cfg, device, reporter) if cfg.head == "new" else []  # before the masks
    dense = copy.deepcopy(loaded.net).to(device).eval()
    dense_map, dense_map_record = (dense_label_map(dense, loaded, splits, cfg, device) if cfg.head == "map"
                                   else (None, None))
    dense_top1 = top1(PromptedNet(dense, loaded.inputs, None, dense_map).to(device), splits.test, device,
                      prompted=False)
    val_text = f" / {len(splits.val)} validation" if splits.val is not None else ""
    reporter.line(
        f"{cfg.method} {cfg.mode} {cfg.target_text} on {device}: {len(splits.train)} train{val_text} / "
        f"{len(splits.test)} test images ({_data_text(splits)}), dense top-1 {dense_top1:.2%}"
    )
    # One fingerprint: the checkpoint is resumed, and stages call the finished run done, on the same digest.
    key = run_fingerprint(cfg.to_dict(), loaded.sha256, loaded.arch, splits.fingerprint, inputs.to_dict())
    # A checkpoint resumes only under the same run fingerprint AND the same conditions of training
    # that the run's identity leaves out: where the images live (RAM or streamed: their augmentation
    # draws differ), the number of processes and the precision the steps ran in.
    resume_key = fingerprint({"run": key, "storage": splits.storage,
                              **({"world_size": ctx.world} if ctx else {}),
                              **({"amp": amp.precision} if amp.enabled else {})})
    invocation = {"model_path": str(Path(model_path).resolve()), "arch": arch, "data_spec": absolute_spec(data_spec),
                  "config": cfg.to_dict(), "num_classes": num_classes, "trust_pickle": trust_pickle,
                  "overwrite": overwrite, "inputs": inputs.to_dict()}
    checkpoint = FileCheckpoint(partial_path(out) / CHECKPOINT, resume_key, invocation)
    resumed = lambda p: reporter.line(f"found an unfinished run with the same settings in {p}")  # noqa: E731
    workspace = staged_directory(out, overwrite, checkpoint, resumed) if main else contextlib.nullcontext(None)
    with workspace as tmp:
        try:
            with reporter:
                result = compress(loaded, splits, cfg, device, reporter,
                                  checkpoint if ctx is None else RankCheckpoint(checkpoint, ctx),
                                  StepOptions(amp if amp.enabled else None, ctx, cfg.sync_bn))
        except KeyboardInterrupt:
            if checkpoint.path.exists() and main:
                reporter.line("interrupted; the same command resumes from the last finished epoch")
            raise
        if tmp is None:  # a rank other than 0: trained its share; rank 0 writes the run
            return out
        run = RunDir(tmp)
        baked = result.masks.baked(result.model.net).to(device).eval()
        shipped = PromptedNet(baked, loaded.inputs, result.model.prompt, result.model.label_map).to(device).eval()
        test_plain, test_prompted = top1_pair(shipped, splits.test, device, result.prompt_spec is not None)
        val_plain, val_prompted = (top1_pair(shipped, splits.val, device, result.prompt_spec is not None)
                                   if splits.val is not None else (None, None))
        final = {"top1_plain": test_plain, "top1_prompted": test_prompted,
                 "val_top1_plain": val_plain, "val_top1_prompted": val_prompted}
        decision = prompt_decision(final.get("val_top1_plain"), final.get("val_top1_prompted"),
                                   result.prompt_spec is not None)
        _save_network(run, MODEL_PT, baked, loaded.arch)
        _save_network(run, DENSE_PT, dense, loaded.arch)
        atomic_torch_save(run.file(MASKS_PT), result.masks.masks())
        run.record(MASKS_PT)
        if result.model.prompt is not None:
            atomic_torch_save(run.file(PROMPT_PT), {k: v.cpu() for k, v in result.model.prompt.state_dict().items()})
            run.record(PROMPT_PT)
        run.manifest = Manifest(
            fingerprint=key, config=cfg.to_dict(), artifacts=run.artifacts, seed=cfg.seed,
            model=ModelRecord(source=str(Path(model_path).resolve()), sha256=loaded.sha256, arch=loaded.arch,
                              num_classes=loaded.num_classes, inputs=loaded.inputs.to_dict(),
                              inputs_from=loaded.inputs_from, input_overrides=inputs.to_dict()),
            data=DataRecord(spec=absolute_spec(splits.spec), fingerprint=splits.fingerprint,
                            classes=splits.train.classes, image_shape=list(splits.train.image_shape),
                            details={"train_images": len(splits.train),
                                     "val_images": len(splits.val) if splits.val is not None else 0,
                                     "test_images": len(splits.test), "augment": vars(splits.augment),
                                     **splits.details}),
            prompt=result.prompt_spec.to_dict() if result.prompt_spec else None,
            method={"name": cfg.method, "mode": cfg.mode, "prunable": PRUNABLE_TEXT[parse_mode(cfg.mode)[0]], "stages": result.stage_plans,
                       "label_mapping": result.label_map or "identity", "dense_label_mapping": dense_map_record,
                       "head": head_record(cfg, baked, splits.num_classes, warmup),
                       "deviations": list(DEVIATIONS)},
            other={"created": now(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "device": str(device),
                   "versions": versions(), "precision": {"amp": amp.precision},
                   **({"distributed": distributed_record(ctx, result.rank_checksums)} if ctx else {}),
                   "timings": {"stage_seconds": result.stage_seconds, "total_seconds": time.perf_counter() - t_start}},
            metrics={
                "dense_top1": dense_top1,
                "prompt_decision": decision,
                **final,
                "sparsity": result.masks.sparsity(),
                "structure": _structure(cfg, result.masks, dense, baked,
                                        torch.zeros(1, *splits.train.image_shape, device=device)),
                "prunable_weights": result.masks.total,
                "per_layer": [vars(s) | {"sparsity": s.sparsity} for s in result.masks.stats()],
                "epochs": [r.to_dict() for r in [*warmup, *result.history]],  # the head warm-up counts too
            },
        )
        run.save()
    structure = run.manifest.metrics["structure"]
    macs = structure["macs"]
    shrink = (f", MACs {macs['dense'] / 1e6:.1f}M -> {macs['compressed'] / 1e6:.1f}M "
              f"({macs['dense'] / max(1, macs['compressed']):.2f}x)" if cfg.mode == "channel" else "")
    reporter.line(
        f"done: sparsity {result.masks.sparsity():.2%}{shrink}, top-1 {final['top1_plain']:.2%} without prompt"
        + (f", {final['top1_prompted']:.2%} with" if final["top1_prompted"] is not None else "")
        + f" (dense {dense_top1:.2%}) -> {out}"
    )
    if result.prompt_spec is not None:
        numbers = (f": validation top-1 {decision['val_top1_prompted']:.2%} with, {decision['val_top1_plain']:.2%} "
                   "without" if decision["split"] else "")
        reporter.line(f"prompt decision: {'fold it into' if decision['fold'] else 'leave it out of'} the exported "
                      f"graph{numbers} ({decision['rule']})")
    return Path(out)


def resume_compress(run_dir: Path, reporter: Reporter | None = None, overwrite: bool = False) -> Path:
    """Continue an interrupted compress from its last finished epoch, with the settings it began with.

    An interrupted --overwrite stays one (the finished run it was replacing is replaced at the end);
    `overwrite` lets a user confirm that for a checkpoint written before that was recorded."""
    from pipelines.artifacts import MANIFEST
    from pipelines.checkpoint import read_invocation
    from vpns_deploy.config import config_from_dict

    run_dir = Path(run_dir)
    if run_dir.name.startswith(".") and run_dir.name.endswith(".partial"):  # the hidden directory itself
        run_dir = run_dir.parent / run_dir.name[1 : -len(".partial")]
    inv = read_invocation(partial_path(run_dir) / CHECKPOINT)
    if inv is None:
        if (run_dir / MANIFEST).is_file():
            (reporter or Reporter()).line(f"{run_dir} is complete: nothing to resume")
            return run_dir
        raise UserError(f"no unfinished run at {run_dir} (no {partial_path(run_dir) / CHECKPOINT})",
                        "pass the --out directory of the interrupted compress, or start a new run")
    cfg = config_from_dict(inv["config"])
    overwrite = overwrite or bool(inv.get("overwrite"))
    if run_dir.exists() and not overwrite:
        raise UserError(f"{run_dir} holds a finished run and {partial_path(run_dir)} an unfinished run meant to "
                        "replace it", f"pass --resume {run_dir} --overwrite to finish and replace it")
    return run_compress(Path(inv["model_path"]), inv["arch"], inv["data_spec"], cfg, run_dir, overwrite=overwrite,
                        num_classes=inv["num_classes"], trust_pickle=inv["trust_pickle"], reporter=reporter,
                        inputs=InputOverrides.from_dict(inv.get("inputs")))
