"""Stage `compress`: load model and data, run the method, write the run directory in one piece."""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch

from pipelines.artifacts import CHECKPOINT
from pipelines.checkpoint import FileCheckpoint, fingerprint
from pipelines.compress_record import RunInputs, phase_line, summarise, write_run
from pipelines.dense_reference import dense_reference
from pipelines.manifest import run_fingerprint
from pipelines.rank_checkpoint import RankCheckpoint, distributed_record, silent_reporter
from pipelines.run_create import check_out, partial_path, staged_directory
from pipelines.run_dir import RunDir
from vpns_deploy.amp import Amp, resolve_amp, setup_cuda_speed
from vpns_deploy.compress import compress
from vpns_deploy.config import CompressConfig
from vpns_deploy.data import Splits, absolute_spec, build_splits, read_catalog
from vpns_deploy.device import resolve_device
from vpns_deploy.distributed import DistContext, session
from vpns_deploy.errors import UserError
from vpns_deploy.evaluate import EVAL_BATCH
from vpns_deploy.heads import prepare_head
from vpns_deploy.models import InputOverrides, LoadedModel, load_model
from vpns_deploy.preflight import measure_step, verdict
from vpns_deploy.progress import Reporter
from vpns_deploy.run_work import SplitSizes, run_phases
from vpns_deploy.trainer import StepOptions


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
    if cfg.preflight:
        preflight(loaded, splits, cfg, device, ctx, reporter)  # a run that cannot fit stops here: nothing written
    # One fingerprint: the checkpoint is resumed, and stages call the finished run done, on the same digest.
    key = run_fingerprint(cfg.to_dict(), loaded.sha256, loaded.arch, splits.fingerprint, inputs.to_dict())
    invocation = {"model_path": str(Path(model_path).resolve()), "arch": arch, "data_spec": absolute_spec(data_spec),
                  "config": cfg.to_dict(), "num_classes": num_classes, "trust_pickle": trust_pickle,
                  "overwrite": overwrite, "inputs": inputs.to_dict()}
    checkpoint = FileCheckpoint(partial_path(out) / CHECKPOINT, resume_key(key, splits, ctx, amp), invocation)
    resumed = lambda p: reporter.line(f"found an unfinished run with the same settings in {p}")  # noqa: E731
    workspace = staged_directory(out, overwrite, checkpoint, resumed) if main else contextlib.nullcontext(None)
    with target_probe(loaded, splits, cfg, ctx, reporter) as probe, workspace as tmp:
        try:
            with reporter:  # the lock and partial directory are held from here: warm-up and reference included
                t_dense = time.perf_counter()
                dense = dense_reference(loaded, splits, cfg, device, reporter)
                t_dense = time.perf_counter() - t_dense
                result = compress(loaded, splits, cfg, device, reporter,
                                  checkpoint if ctx is None else RankCheckpoint(checkpoint, ctx),
                                  StepOptions(amp if amp.enabled else None, ctx, cfg.sync_bn), probe,
                                  given_map=dense.label_map_record if dense.record["kind"] == "as-given" else None)
        except KeyboardInterrupt:
            if checkpoint.path.exists() and main:
                reporter.line("interrupted; the same command resumes from the last finished epoch")
            raise
        if tmp is None:  # a rank other than 0: trained its share; rank 0 writes the run
            return out
        other = {"precision": {"amp": amp.precision},
                 **({"distributed": distributed_record(ctx, result.rank_checksums)} if ctx else {}),
                 "timings": {"stage_seconds": result.stage_seconds, "total_seconds": time.perf_counter() - t_start}}
        manifest = write_run(RunDir(tmp), result, dense,
                             RunInputs(model_path, loaded, splits, cfg, inputs, key, device, other))
    summarise(manifest, out, reporter)
    reporter.line(phase_line(manifest, t_dense, time.perf_counter() - t_start))
    return Path(out)


def target_probe(loaded: LoadedModel, splits: Splits, cfg: CompressConfig, ctx: DistContext | None,
                 reporter: Reporter) -> contextlib.AbstractContextManager:
    """--budget-by latency: the dense network exported and opened on the target runtime (an error line
    here, before anything is written, when the runtime cannot run on this machine); else nothing. Under
    torchrun rank 0 alone times (compress hands its budget to the other ranks)."""
    if not cfg.latency_budget or (ctx is not None and not ctx.is_main):
        return contextlib.nullcontext(None)
    from export.target_runtime import NetworkProbe

    reporter.line(f"latency budget: timing on {cfg.target_runtime} at batch {cfg.target_batch} (the dense graph "
                  "exported once as it deploys; each candidate compacted, exported and timed against it)")
    return NetworkProbe(copy.deepcopy(loaded.net).cpu().eval(), loaded.inputs, tuple(splits.train.image_shape),
                        cfg.target_runtime, cfg.target_batch, cfg.target_probe_seconds)


def resume_key(run_key: str, splits: Splits, ctx: DistContext | None, amp: Amp) -> str:
    """A checkpoint resumes only under the same run fingerprint AND the same conditions of training
    that the run's identity leaves out: where the images live (RAM or streamed: their augmentation
    draws differ), the number of processes and the precision the steps ran in."""
    return fingerprint({"run": run_key, "storage": splits.storage, **({"world_size": ctx.world} if ctx else {}),
                        **({"amp": amp.precision} if amp.enabled else {})})


def preflight(loaded: LoadedModel, splits: Splits, cfg: CompressConfig, device: torch.device,
              ctx: DistContext | None, reporter: Reporter) -> None:
    """Measure one training step, print the run's projected length and peak memory, and stop with
    settings that fit (UserError) when it would not fit; sets the reporter's pace for its ETAs."""
    world = ctx.world if ctx is not None else 1
    batch = max(1, min(cfg.batch_size, len(splits.train)) // world)  # each rank's share under torchrun
    cost = measure_step(loaded.net, loaded.inputs, splits.train.image_shape, batch, device)
    sizes = SplitSizes(len(splits.train), len(splits.val) if splits.val is not None else 0, len(splits.test))
    eval_batch = min(EVAL_BATCH, max(sizes.test, sizes.val))
    reporter.line(verdict(cost, run_phases(cfg, sizes), eval_batch, splits.train.image_shape[-1]))
    reporter.pace = {"train": cost.train_seconds_per_image, "forward": cost.forward_seconds_per_image}


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
