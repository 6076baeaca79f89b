"""The `vpns-deploy` command line: the top layer (nothing imports it), thin wrappers over the pipeline stages.

Over 300 lines because each command carries its help text, which is the user's documentation; the
options compress and sweep share are generated (cli_options.py), not written here."""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.cli_options import (
    HEAD_OPTIONS, METHOD_OPTIONS, MODEL_OPTIONS, TRAINING_OPTIONS, compress_config, input_overrides, with_options,
)
from pipelines.recipe import ARCH_HELP, ReportSection
from vpns_deploy.config import DEFAULT_CALIB_IMAGES, DEVIATIONS, CompressConfig
from vpns_deploy.data import DATA_SPEC_HELP
from vpns_deploy.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Compress vision models with VPNs (visual prompt + learned masks), export them for deployment "
    "with the prompt folded in, and measure what you ship.\n\n"
    "Typical use: [bold]compress[/] MODEL -> [bold]export[/] RUN_DIR -> [bold]report[/] RUN_DIR.",
)

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


# Options of compress and sweep that come from no configuration dataclass (those that do: cli_options.py).
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory (only once the new run is complete).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="Comma-separated: fp32 (always written), fp16 (graph cast to float16), int8 (static Q/DQ, symmetric, per-channel weights, calibrated on training images). Precision lives in the graph, as TensorRT 10/11 strongly typed networks need.")]
SPARSITY, SPEEDUP = ((CompressConfig, "sparsity"),), ((CompressConfig, "speedup"),)
EMPTY_LAYERS = ((CompressConfig, "allow_empty_layers"),)


def _is_rank0() -> bool:
    """True in a single process and on torchrun's rank 0 (imported here: --help never loads torch)."""
    from vpns_deploy.distributed import env_rank

    return env_rank() == 0


def _reporter(quiet: bool):
    """Progress for this process: under torchrun only rank 0 shows any (the others train silently)."""
    from vpns_deploy.progress import Reporter

    if not _is_rank0():
        from pipelines.rank_checkpoint import silent_reporter

        return silent_reporter()
    return Reporter(quiet=quiet)


def _say(text: str) -> None:
    """A command's result line; under torchrun rank 0 alone prints it."""
    if _is_rank0():
        typer.echo(text)


@app.command(
    help="Find a sparse subnetwork and fine-tune it; writes a run directory.\n\n"
    "[bold]vpns[/]: stage 1 trains per-weight scores and the visual prompt with the weights frozen "
    "(two optimiser steps per batch: a prompted pass on un-augmented images, then an un-prompted pass on "
    "augmented images); the mask keeps the global top-k |score| (straight-through gradient), re-selected "
    "after every step. Stage 2 fixes the mask and trains weights, BN and prompt. "
    "[bold]hydra[/]: the same without prompt, one step per batch. [bold]magnitude[/]: global |W| top-k, "
    "then fine-tuning for epochs-mask + epochs-tune epochs. [bold]tp-groupnorm[/] (--mode channel): Torch-Pruning's "
    "iterative group-norm pruner run to the budget, then the same fine-tuning. VPNs steps twice per batch, so give the "
    "baselines twice the epochs for an equal number of optimiser steps.\n\n"
    "Prunable (--mode unstructured): every Conv2d and Linear weight, stem and classifier included; BN and "
    "biases never. --mode channel: one score per channel of every coupled group (torch-pruning's dependency "
    "graph; residual streams included, classifier outputs never); the result is physically smaller. "
    "--mode 2:4 (N:M): N of every M input-channel weights in each layer whose input channels divide by M; "
    "the rest stay dense and are listed in the manifest.\n\n"
    "Deviations from the reference code: " + "; ".join(DEVIATIONS) + ".",
)
@friendly
@with_options(MODEL_OPTIONS, SPARSITY, METHOD_OPTIONS, SPEEDUP, TRAINING_OPTIONS, HEAD_OPTIONS, EMPTY_LAYERS)
def compress(
    model: Annotated[Optional[Path], typer.Argument(help="Checkpoint: a state dict (needs --arch) or, with --trust-pickle, a pickled nn.Module. Leave out with --resume.")] = None,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP + " Required unless --resume.")] = None,
    options: dict | None = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<arch>-<method>-s<sparsity>-seed<seed>).")] = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run (its --out directory) from its last finished epoch, with the settings it was started with. Re-running the same command does the same.")] = None,
    quiet: QuietOpt = False,
) -> None:
    from pipelines.compress_stage import run_compress
    from pipelines.run_dir import DEFAULT_RUNS

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
    cfg, arch = compress_config(options), options["arch"]
    if out is None:
        mode_part = "channel-" if cfg.mode == "channel" else ""
        out = DEFAULT_RUNS / f"{(arch or model.stem).replace(':', '-')}-{cfg.method}-{mode_part}{cfg.target_text}-seed{cfg.seed}"

    run_compress(model, arch, data, cfg, out, overwrite, options["num_classes"], options["trust_pickle"],
                 _reporter(quiet), inputs=input_overrides(options))
    _say(str(out))


@app.command()
@friendly
@with_options(MODEL_OPTIONS, METHOD_OPTIONS, TRAINING_OPTIONS, HEAD_OPTIONS)
def sweep(
    model: Annotated[Path, typer.Argument(help="Checkpoint, as for compress.")],
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    sparsity: Annotated[str, typer.Option(help="Comma-separated targets, one run each (unstructured: of weights; channel: of channels).")] = "0.5,0.7,0.9",
    speedup: Annotated[Optional[str], typer.Option(help="Channel mode: comma-separated MACs reductions instead of --sparsity, e.g. 1.5,2,3.")] = None,
    options: dict | None = None,
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

    base = compress_config(options, speedup=_floats(speedup, "--speedup")[0] if speedup else None)
    sparsities = None if speedup else _floats(sparsity, "--sparsity")
    for s in sparsities or []:
        CompressConfig(sparsity=s)  # one-line error for a value outside (0, 1), before anything runs
    arch = options["arch"]
    out = out or DEFAULT_RUNS / f"sweep-{(arch or model.stem).replace(':', '-')}-{base.method}-{base.mode.replace(':', 'of')}"
    result = run_sweep(model, arch, data, base, out, sparsities, _floats(speedup, "--speedup") if speedup else None,
                       _precisions(precision), options["num_classes"], options["trust_pickle"], overwrite,
                       _reporter(quiet), inputs=input_overrides(options))
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
    if report_json.is_file() and _is_rank0():  # under torchrun: rank 0 alone
        from pipelines.report_record import Report
        from pipelines.report_render import render_table
        from vpns_deploy.progress import out_console

        out_console.print(render_table(Report.read(report_json)))
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
@with_options(((ReportSection, "latency_budget"),))
def report(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="One or more run directories (default: the latest run). Several: compared side by side.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Override the runs' data.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Several runs: where the comparison goes (default: a 'comparison' folder beside the first run).")] = None,
    remeasure: Annotated[bool, typer.Option(help="Measure again even where a run's report.json is newer than its export.")] = False,
    options: dict | None = None,
    trust_pickle: RunTrustPickleOpt = False,
) -> None:
    """Measure dense vs compressed and show it: top-1 (PyTorch, ONNX Runtime in every exported precision),
    parameters, MACs, sizes, ONNX Runtime CPU latency (median, p90 and a 95 % interval, batch 1 and 64,
    bounded by --latency-budget, with progress), speedup with its interval ("within noise" where that
    holds 1.0) and efficiency (latency speedup / MACs ratio), the CPU's instruction sets (AVX2, AVX-512,
    VNNI, AMX) and whether int8 can be faster on it, TensorRT where engines were built.

    Writes report.json, report.md, PNG plots (training curves, per-layer sparsity, latency) and a
    self-contained report.html into the run directory; several runs get one comparison of them all.
    A run measured after its last export is not measured again unless --remeasure.
    """
    from pipelines.compare import report_runs
    from pipelines.load_run import pickles_trusted

    with pickles_trusted(trust_pickle):
        report_runs(run_dirs or [_run_dir(None)], out=out, data_spec=data, remeasure=remeasure,
                    latency_budget=options["latency_budget"])


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
