"""The `vpns-deploy` command line: the top layer (nothing imports it), thin wrappers over the pipeline stages."""
from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vpns_deploy.config import (
    AMP_HELP, DEFAULT_CALIB_IMAGES, DEVIATIONS, METHODS, PROMPT_KINDS, SCORE_LR_RULE, CompressConfig, OptimConfig,
)
from vpns_deploy.data import DATA_SPEC_HELP
from vpns_deploy.errors import UserError
from vpns_deploy.heads import HEAD_HELP
from vpns_deploy.models.registry import ARCH_FAMILIES, INTERPOLATIONS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Compress vision models with VPNs (visual prompt + learned masks), export them for deployment "
    "with the prompt folded in, and measure what you ship.\n\n"
    "Typical use: [bold]compress[/] MODEL -> [bold]export[/] RUN_DIR -> [bold]report[/] RUN_DIR.",
)

_defaults = CompressConfig()
ARCH_HELP = (f"Architecture of MODEL: {ARCH_FAMILIES}. Sets the input size, resampling and normalisation the "
             "network was trained with (its timm/torchvision config), unless overridden below. A pickled MODEL "
             "takes its input from --arch (and must fit it) or from --mean/--std.")
DATA_HELP = f"Data set: {DATA_SPEC_HELP}."
QUIET_HELP = "No live progress bars: one line per epoch (what non-terminal output, e.g. CI logs, gets anyway)."


# What an interrupted command leaves behind (each command writes all-or-nothing, resumably).
INTERRUPTED = {
    "compress": "no run directory was written (a run interrupted after its first epoch keeps its checkpoint "
                "and the same command resumes it)",
    "export": "export did not finish; the run is as it was (no new graph was written): run export again",
    "report": "the run's model and graphs are untouched; run report again for a complete report",
    "sweep": "finished points are kept; the same command skips them and resumes the interrupted one",
    "run_recipe_cmd": "finished stages are kept; running the recipe again continues where it stopped",
    "train": "no model file was written",
}


def friendly(fn):
    """Bad input -> one line on stderr and exit code 2; Ctrl-C -> exit 130. No tracebacks, no partial runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # disk full, read-only or vanished paths: one line, not a traceback
            from vpns_deploy.errors import os_error

            typer.echo(f"error: {os_error(exc, 'a file operation')}", err=True)
            raise typer.Exit(UserError.exit_code) from None
        except KeyboardInterrupt:
            typer.echo(f"interrupted: {INTERRUPTED.get(fn.__name__, 'nothing was half-written')}", err=True)
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@friendly
def train(
    arch: Annotated[str, typer.Option(help=ARCH_HELP)],
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    out: Annotated[Path, typer.Option(help="Where to write the trained state dict.")],
    epochs: Annotated[int, typer.Option(min=1)] = 15,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle SGD).")] = 0.1,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    overwrite: bool = False,
    quiet: Annotated[bool, typer.Option(help=QUIET_HELP)] = False,
) -> None:
    """Train a dense model from scratch (the demo's pretrained model; a reference for small data sets)."""
    from vpns_deploy.atomic import atomic_torch_save
    from vpns_deploy.data import load_splits
    from vpns_deploy.device import resolve_device
    from vpns_deploy.models import get_arch
    from vpns_deploy.pretrain import PretrainConfig, pretrain
    from vpns_deploy.progress import Reporter

    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists", "pass --overwrite or another --out")
    spec, dev = get_arch(arch), resolve_device(device)
    splits = load_splits(data, spec.inputs)  # at the architecture's input: channels, size
    cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    from vpns_deploy.config import check_numbers

    check_numbers(cfg)  # --lr nan/inf/<= 0: one line, before any epoch
    net, acc = pretrain(spec, splits, cfg, dev, _reporter(quiet))
    atomic_torch_save(out, {k: v.cpu() for k, v in net.state_dict().items()})
    typer.echo(f"{arch} trained on {data}: test top-1 {acc:.2%} -> {out}")


# Options shared by compress and sweep: defined once, so help and defaults cannot drift apart.
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help=ARCH_HELP)]
MethodOpt = Annotated[str, typer.Option("--method", help=f"One of {', '.join(METHODS)}.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="unstructured (global top-k over weights); channel (whole coupled channel groups, then physically removed: faster on every runtime); N:M such as 2:4 (N of every M input-channel weights: sparse tensor cores).")]
EpochsMaskOpt = Annotated[int, typer.Option("--epochs-mask", help="Stage-1 (mask finding) epochs.")]
EpochsTuneOpt = Annotated[int, typer.Option("--epochs-tune", help="Stage-2 (subnetwork tuning) epochs.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per optimiser step.")]
PromptOpt = Annotated[str, typer.Option("--prompt", help="pad: additive frame (identity, zero init); expand: image zero-padded by --pad and the border learned (sigmoid); fix: top-left square (sigmoid); random: square at a random place per step (sigmoid; expected mask at evaluation).")]
PadOpt = Annotated[Optional[int], typer.Option("--pad", help="Prompt width in pixels; default 7 % of the image side (2 px at 32 px).")]
LrScoresOpt = Annotated[Optional[float], typer.Option("--lr-scores", help=f"Adam learning rate of the per-weight scores in stage 1 (unstructured, N:M). Default: {SCORE_LR_RULE}, i.e. the reference's 1e-4 for 30-epoch stages and more for short ones (1e-3 over 392 steps gave HYDRA and VPNs about +3 points on ResNet-20 at 90 %: docs/benchmarks.md).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of scores, data order and augmentation.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu or cuda.")]
TrainSubsetOpt = Annotated[Optional[int], typer.Option("--train-subset", help="Use N class-balanced training images (quick runs).")]
TestSubsetOpt = Annotated[Optional[int], typer.Option("--test-subset", help="Evaluate on N class-balanced test images (default: all).")]
ValFractionOpt = Annotated[float, typer.Option("--val-fraction", help="Fraction of the training split held out (class-balanced, the same images for every --seed) as the validation split: it is evaluated after every epoch and decides whether the prompt ships; the test split is measured only at the end of each stage and never chooses anything. 0: no validation split. With --train-subset N it is carved from the N images.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="DataLoader processes that decode and augment streamed images. Default: the CPU cores minus one, at most 8 (0 on a single core). Never changes a result.")]
MemoryBudgetOpt = Annotated[float, typer.Option("--memory-budget", help="Fraction of RAM the decoded images may take: a data set that fits is decoded once into memory (tar archives also cached on disk by sha256 and size); a larger one is streamed from its files by the workers. 0: always stream.")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classes of the model's head (a check): with --head keep it must match the data; with --head map/new it must match the checkpoint's head.")]
HeadOpt = Annotated[str, typer.Option("--head", help=HEAD_HELP)]
HeadWarmupOpt = Annotated[int, typer.Option("--head-warmup-epochs", help="--head new: epochs that train only the fresh head (SGD, cosine; recipes: compress.optim.lr_head) before stage 1, counted in the run's optimiser steps.")]
InputSizeOpt = Annotated[Optional[int], typer.Option("--input-size", help="Side in pixels the network is trained and exported at (images are resized; evaluation resizes to size/crop_pct and centre-crops). Default: the architecture's own (32 CIFAR ResNets, 8 digits_cnn, 224 or the config's for torchvision/timm; a pickled MODEL without --arch keeps the data's size).")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean of [0,1] pixels, comma-separated (e.g. 0.485,0.456,0.406). Default: the architecture's config.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std of [0,1] pixels, comma-separated, all > 0 (e.g. 0.229,0.224,0.225). Default: the architecture's config.")]
InterpolationOpt = Annotated[Optional[str], typer.Option("--interpolation", help=f"Resampling when resizing: {'|'.join(INTERPOLATIONS)}. Default: the architecture's config.")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow a pickled nn.Module (runs code from the file: only for files you trust).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory (only once the new run is complete).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="Comma-separated: fp32 (always written), fp16 (graph cast to float16), int8 (static Q/DQ, symmetric, per-channel weights, calibrated on training images). Precision lives in the graph, as TensorRT 10/11 strongly typed networks need.")]



def _input_overrides(input_size: int | None, mean: str | None, std: str | None,
                     interpolation: str | None):
    """--input-size/--mean/--std/--interpolation as one validated InputOverrides (one-line errors)."""
    from vpns_deploy.models.input_overrides import InputOverrides, parse_floats

    return InputOverrides(input_size, parse_floats(mean, "--mean"), parse_floats(std, "--std"), interpolation)


def _reporter(quiet: bool):
    """Progress for this process: under torchrun only rank 0 shows any (the others train silently)."""
    from vpns_deploy.progress import Reporter

    if os.environ.get("RANK", "0") != "0":
        from pipelines.rank_checkpoint import silent_reporter

        return silent_reporter()
    return Reporter(quiet=quiet)


def _say(text: str) -> None:
    """A command's result line; under torchrun rank 0 alone prints it."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(text)


def _optim(lr_scores: float | None) -> OptimConfig:
    """The default optimisers, with the score learning rate the user asked for (OptimConfig checks it)."""
    return _defaults.optim if lr_scores is None else dataclasses.replace(_defaults.optim, lr_scores=lr_scores)


@app.command(
    help="Find a sparse subnetwork and fine-tune it; writes a run directory.\n\n"
    "[bold]vpns[/]: stage 1 trains per-weight scores and the visual prompt with the weights frozen "
    "(two optimiser steps per batch: a prompted pass on un-augmented images, then an un-prompted pass on "
    "augmented images); the mask keeps the global top-k |score| (straight-through gradient), re-selected "
    "after every step. Stage 2 fixes the mask and trains weights, BN and prompt. "
    "[bold]hydra[/]: the same without prompt, one step per batch. [bold]magnitude[/]: global |W| top-k, "
    "then fine-tuning for epochs-mask + epochs-tune epochs. VPNs steps twice per batch, so give the "
    "baselines twice the epochs for an equal number of optimiser steps.\n\n"
    "Prunable (--mode unstructured): every Conv2d and Linear weight, stem and classifier included; BN and "
    "biases never. --mode channel: one score per channel of every coupled group (torch-pruning's dependency "
    "graph; residual streams included, classifier outputs never); the result is physically smaller. "
    "--mode 2:4 (N:M): N of every M input-channel weights in each layer whose input channels divide by M; "
    "the rest stay dense and are listed in the manifest.\n\n"
    "Deviations from the reference code: " + "; ".join(DEVIATIONS) + ".",
)
@friendly
def compress(
    model: Annotated[Optional[Path], typer.Argument(help="Checkpoint: a state dict (needs --arch) or, with --trust-pickle, a pickled nn.Module. Leave out with --resume.")] = None,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP + " Required unless --resume.")] = None,
    arch: ArchOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    interpolation: InterpolationOpt = None,
    sparsity: Annotated[float, typer.Option(help="Fraction removed, in (0, 1): of prunable weights (unstructured) or of prunable channels (channel). Unused by N:M.")] = _defaults.sparsity,
    method: MethodOpt = _defaults.method,
    mode: ModeOpt = _defaults.mode,
    speedup: Annotated[Optional[float], typer.Option(help="Channel mode: target MACs reduction (e.g. 2.0 halves the MACs); the channel fraction is searched at every mask update, replacing --sparsity.")] = None,
    epochs_mask: EpochsMaskOpt = _defaults.epochs_mask,
    epochs_tune: EpochsTuneOpt = _defaults.epochs_tune,
    batch_size: BatchOpt = _defaults.batch_size,
    prompt: PromptOpt = _defaults.prompt,
    pad: PadOpt = None,
    lr_scores: LrScoresOpt = None,
    seed: SeedOpt = _defaults.seed,
    device: DeviceOpt = _defaults.device,
    train_subset: TrainSubsetOpt = None,
    test_subset: TestSubsetOpt = None,
    val_fraction: ValFractionOpt = _defaults.val_fraction,
    workers: WorkersOpt = None,
    memory_budget: MemoryBudgetOpt = _defaults.memory_budget,
    num_classes: NumClassesOpt = None,
    head: HeadOpt = _defaults.head,
    head_warmup_epochs: HeadWarmupOpt = _defaults.head_warmup_epochs,
    trust_pickle: TrustPickleOpt = False,
    allow_empty_layers: Annotated[bool, typer.Option(help="Unstructured mode: accept a --sparsity so high that some layer keeps no weight at all (its output becomes a constant). Refused without this.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<arch>-<method>-s<sparsity>-seed<seed>).")] = None,
    overwrite: OverwriteOpt = False,
    amp: Annotated[str, typer.Option("--amp", help=AMP_HELP)] = _defaults.amp,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Under torchrun on CUDA GPUs: BatchNorm statistics over the global batch (SyncBatchNorm) instead of each GPU's share.")] = _defaults.sync_bn,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run (its --out directory) from its last finished epoch, with the settings it was started with. Re-running the same command does the same.")] = None,
    quiet: QuietOpt = False,
) -> None:
    from pipelines.compress_stage import run_compress
    from pipelines.run_dir import DEFAULT_RUNS
    from vpns_deploy.progress import Reporter

    if resume is not None:
        if model is not None:
            raise UserError("pass either MODEL or --resume RUN_DIR, not both",
                            "--resume continues with the settings the run was started with")
        from pipelines.compress_stage import resume_compress

        _say(str(resume_compress(resume, _reporter(quiet), overwrite=overwrite)))
        return
    if model is None or data is None:
        raise UserError("compress needs MODEL and --data", "e.g. vpns-deploy compress model.pt --data tar:cifar10.tar.gz "
                        "--arch cifar_resnet20 (or --resume RUN_DIR)")
    cfg = CompressConfig(
        method=method, mode=mode, speedup=speedup, sparsity=sparsity, epochs_mask=epochs_mask, epochs_tune=epochs_tune,  # type: ignore[arg-type]
        batch_size=batch_size, prompt=prompt, pad=pad, seed=seed, device=device,  # type: ignore[arg-type]
        train_subset=train_subset, test_subset=test_subset, optim=_optim(lr_scores),
        allow_empty_layers=allow_empty_layers, head=head, head_warmup_epochs=head_warmup_epochs,
        val_fraction=val_fraction, workers=workers, memory_budget=memory_budget, amp=amp, sync_bn=sync_bn,
    )
    if out is None:
        mode_part = "channel-" if cfg.mode == "channel" else ""
        out = DEFAULT_RUNS / f"{(arch or model.stem).replace(':', '-')}-{method}-{mode_part}{cfg.target_text}-seed{seed}"

    run_compress(model, arch, data, cfg, out, overwrite, num_classes, trust_pickle, _reporter(quiet),
                 inputs=_input_overrides(input_size, mean, std, interpolation))
    _say(str(out))


@app.command()
@friendly
def sweep(
    model: Annotated[Path, typer.Argument(help="Checkpoint, as for compress.")],
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    sparsity: Annotated[str, typer.Option(help="Comma-separated targets, one run each (unstructured: of weights; channel: of channels).")] = "0.5,0.7,0.9",
    speedup: Annotated[Optional[str], typer.Option(help="Channel mode: comma-separated MACs reductions instead of --sparsity, e.g. 1.5,2,3.")] = None,
    arch: ArchOpt = None,
    input_size: InputSizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    interpolation: InterpolationOpt = None,
    method: MethodOpt = _defaults.method,
    mode: ModeOpt = _defaults.mode,
    epochs_mask: EpochsMaskOpt = _defaults.epochs_mask,
    epochs_tune: EpochsTuneOpt = _defaults.epochs_tune,
    batch_size: BatchOpt = _defaults.batch_size,
    prompt: PromptOpt = _defaults.prompt,
    pad: PadOpt = None,
    lr_scores: LrScoresOpt = None,
    seed: SeedOpt = _defaults.seed,
    device: DeviceOpt = _defaults.device,
    train_subset: TrainSubsetOpt = None,
    test_subset: TestSubsetOpt = None,
    val_fraction: ValFractionOpt = _defaults.val_fraction,
    workers: WorkersOpt = None,
    memory_budget: MemoryBudgetOpt = _defaults.memory_budget,
    num_classes: NumClassesOpt = None,
    head: HeadOpt = _defaults.head,
    head_warmup_epochs: HeadWarmupOpt = _defaults.head_warmup_epochs,
    trust_pickle: TrustPickleOpt = False,
    precision: PrecisionOpt = "fp32",
    out: Annotated[Optional[Path], typer.Option(help="Sweep directory: one run per point inside it (default runs/sweep-<arch>-<method>-<mode>).")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """One complete run per target (compress -> export -> report), then the trade-off plots.

    Writes <out>/<point>/ run directories, and in <out>: sweep.json, accuracy_vs_sparsity.png,
    pareto.png (top-1 vs ONNX Runtime latency at batch 64, with the Pareto front), and the side-by-side
    report (report.md, report.html, PNGs). Re-running the same command skips finished points and
    resumes an interrupted one.
    """
    from pipelines.run_dir import DEFAULT_RUNS
    from pipelines.sweep import run_sweep
    from vpns_deploy.progress import Reporter

    base = CompressConfig(
        method=method, mode=mode, epochs_mask=epochs_mask, epochs_tune=epochs_tune, batch_size=batch_size,  # type: ignore[arg-type]
        prompt=prompt, pad=pad, seed=seed, device=device, train_subset=train_subset, test_subset=test_subset,  # type: ignore[arg-type]
        speedup=_floats(speedup, "--speedup")[0] if speedup else None, optim=_optim(lr_scores),
        val_fraction=val_fraction, workers=workers, memory_budget=memory_budget, head=head,
        head_warmup_epochs=head_warmup_epochs,
    )
    sparsities = None if speedup else _floats(sparsity, "--sparsity")
    for s in sparsities or []:
        CompressConfig(sparsity=s)  # one-line error for a value outside (0, 1), before anything runs
    out = out or DEFAULT_RUNS / f"sweep-{(arch or model.stem).replace(':', '-')}-{method}-{mode.replace(':', 'of')}"
    result = run_sweep(model, arch, data, base, out, sparsities, _floats(speedup, "--speedup") if speedup else None,
                       _precisions(precision), num_classes, trust_pickle, overwrite, _reporter(quiet),
                       inputs=_input_overrides(input_size, mean, std, interpolation))
    _say(str(result))


@app.command("run")
@friendly
def run_recipe_cmd(
    recipe: Annotated[Path, typer.Argument(help="A .toml recipe (see recipes/).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run made with other settings.")] = False,
    quiet: Annotated[bool, typer.Option(help=QUIET_HELP)] = False,
) -> None:
    """Run a recipe: pretrain (optional) -> compress -> export -> report, validated before anything runs.

    Stages whose outputs exist, verify against their sha256 and match the recipe are skipped; an
    interrupted compress resumes from its last finished epoch. Re-running a recipe is always safe.
    """
    from pipelines.recipe import load_recipe
    from pipelines.stages import run_recipe

    parsed = load_recipe(recipe)
    ran = run_recipe(parsed, overwrite=overwrite, reporter=_reporter(quiet))
    report_json = parsed.out / "report.json"
    if report_json.is_file() and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 alone
        import json

        from pipelines.report_stage import render_table
        from vpns_deploy.progress import out_console

        out_console.print(render_table(json.loads(report_json.read_text())))
    _say(f"{parsed.out}: {'ran ' + ', '.join(ran) if ran else 'every stage was already done'}")


RUN_DIR_HELP = "Run directory from compress (default: the newest under runs/)."
RunTrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow the run's model.pt/dense.pt to be pickled nn.Modules (a run made from a pickled MODEL). Unpickling runs code from the file, and a run directory can be edited by anyone who can write it: only for runs you trust.")]


def _precisions(text: str) -> tuple[str, ...]:
    """'fp16,int8' -> ('fp32', 'fp16', 'int8'): fp32 is always written (the others derive from it)."""
    return tuple(dict.fromkeys(["fp32", *(p.strip() for p in text.split(",") if p.strip())]))


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}", f"e.g. {what} 0.5,0.7,0.9") from None
    if not values:
        raise UserError(f"{what} is empty", f"e.g. {what} 0.5,0.7,0.9")
    return values


def _run_dir(run_dir: Optional[Path]) -> Path:
    from pipelines.run_dir import latest_run

    return run_dir if run_dir is not None else latest_run()


@app.command()
@friendly
def export(
    run_dir: Annotated[Optional[Path], typer.Argument(help=RUN_DIR_HELP)] = None,
    prompt: Annotated[Optional[bool], typer.Option("--prompt/--no-prompt", help="Fold the learned prompt into the graph, or ship the network without it. Default: what compress decided on the validation split (folded in only where top-1 with it >= without it; recorded in manifest.json).", show_default=False)] = None,
    graph_resize: Annotated[bool, typer.Option("--graph-resize", help="Fold a Resize in front of the graph so it takes uint8 NHWC images of any height and width (resize shorter side + centre crop, antialiased, as the training evaluation transform; its parity with PyTorch is measured and recorded). Without it the graph takes the model's input size only.")] = False,
    data: Annotated[Optional[str], typer.Option(help="Override the run's data (for the parity and calibration images).")] = None,
    precision: PrecisionOpt = "fp32",
    calib_images: Annotated[int, typer.Option(help="INT8: class-balanced training images fed through the whole deployed graph to calibrate its scales.")] = DEFAULT_CALIB_IMAGES,
    trt: Annotated[bool, typer.Option("--trt", help="Also build TensorRT engines (strongly typed; SPARSE_WEIGHTS for N:M runs; dynamic batch 1..256, opt 64; timing cache kept in the run). Without a GPU or TensorRT: one line saying which is missing, exit 0.")] = False,
    require_trt: Annotated[bool, typer.Option("--require-trt", help="Make a missing GPU/TensorRT an error (exit 2) instead of a note.")] = False,
    trust_pickle: RunTrustPickleOpt = False,
) -> None:
    """Write model.onnx (uint8 NHWC in at the model's input size, or any size with --graph-resize; the prompt
    folded into the preprocessing where it helped on validation; a --head map label map folded in) and dense.onnx.
    manifest.json's export.caller_must_feed states exactly what to feed.

    Each graph passes onnx's checker and strict shape inference, then ONNX Runtime must reproduce the
    PyTorch logits on real test images; a graph that fails is never written. fp16/int8 siblings
    (model.fp16.onnx, model.int8.onnx, ...) are compared with fp32 on test images; for N:M runs the
    pattern is read back from the shipped fp32 and int8 weights.
    """
    from pipelines.export_stage import run_export
    from pipelines.load_run import pickles_trusted

    with pickles_trusted(trust_pickle):
        run_export(_run_dir(run_dir), with_prompt=prompt, data_spec=data, precisions=_precisions(precision),
                   calib_images=calib_images, trt=trt or require_trt, require_trt=require_trt,
                   graph_resize=graph_resize)


@app.command()
@friendly
def report(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="One or more run directories (default: the latest run). Several: compared side by side.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Override the runs' data.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Several runs: where the comparison goes (default: a 'comparison' folder beside the first run).")] = None,
    remeasure: Annotated[bool, typer.Option(help="Measure again even where a run's report.json is newer than its export.")] = False,
    trust_pickle: RunTrustPickleOpt = False,
) -> None:
    """Measure dense vs compressed and show it: top-1 (PyTorch, ONNX Runtime in every exported precision),
    parameters, MACs, sizes, ONNX Runtime CPU latency (median and p90, batch 1 and 64), speedup and
    efficiency (latency speedup / MACs ratio), TensorRT where engines were built.

    Writes report.json, report.md, PNG plots (training curves, per-layer sparsity, latency) and a
    self-contained report.html into the run directory; several runs get one comparison of them all.
    A run measured after its last export is not measured again unless --remeasure.
    """
    from pipelines.compare import report_runs
    from pipelines.load_run import pickles_trusted

    with pickles_trusted(trust_pickle):
        report_runs(run_dirs or [_run_dir(None)], out=out, data_spec=data, remeasure=remeasure)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (kill, CI timeouts) unwinds like Ctrl-C, so partial run directories are removed."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """The console script: usage errors (a bad option value, a missing argument) become the same one-line
    `error:` as every other bad input, instead of a boxed usage screen."""
    _interrupt_on_sigterm()
    try:
        code = app(prog_name="vpns-deploy", standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # typer's click: UsageError, BadParameter, NoArgsIsHelpError, ...
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vpns-deploy` or a command alone: its help
            typer.echo(ctx.get_help() if ctx is not None else "")
            sys.exit(0)
        message = " ".join(exc.format_message().split()).rstrip(".")
        where = f"; see {ctx.command_path} --help" if ctx is not None else ""
        typer.echo(f"error: {message[:1].lower() + message[1:]}{where}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    finally:  # torchrun SIGTERMs the rest of a failed job: while exiting, that is no interrupt to report
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
