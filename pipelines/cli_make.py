"""The commands that make runs: train (a dense model), compress (one run), sweep (a run per target) and
run (a recipe). Each builds a Plan for the one stage graph (stages.py) and runs it; only cli.py imports
this module."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.cli_common import (
    DATA_HELP, QUIET_HELP, OverwriteOpt, PrecisionOpt, QuietOpt, floats, friendly, is_rank0, precisions, reporter, say,
)
from pipelines.cli_options import (
    HEAD_OPTIONS, METHOD_OPTIONS, MODEL_OPTIONS, TRAINING_OPTIONS, compress_config, input_overrides, with_options,
)
from pipelines.recipe import ARCH_SHORT, ReportSection
from vpns_deploy.config import DEVIATIONS, CompressConfig
from vpns_deploy.errors import UserError

SPARSITY = ((CompressConfig, "sparsity"),)
TARGET = tuple((CompressConfig, n) for n in ("budget_by", "target_runtime", "target_batch", "max_drop"))
SPEEDUP = ((CompressConfig, "speedup"), *TARGET)
EMPTY_LAYERS = ((CompressConfig, "allow_empty_layers"),)

COMPRESS_HELP = (
"Find a sparse subnetwork and fine-tune it; writes a run directory.\n\n"
    "The methods, what each --mode prunes and the deviations from the reference code: docs/OPTIONS.md.\f\n\n"
    "vpns: stage 1 trains per-weight scores and the visual prompt with the weights frozen "
    "(two optimiser steps per batch: a prompted pass on un-augmented images, then an un-prompted pass on "
    "augmented images); the mask keeps the global top-k |score| (straight-through gradient), re-selected "
    "after every step. Stage 2 fixes the mask and trains weights, BN and prompt. "
    "hydra: the same without prompt, one step per batch. magnitude: global |W| top-k, "
    "then fine-tuning for epochs-mask + epochs-tune epochs. tp-groupnorm (--mode channel): Torch-Pruning's "
    "iterative group-norm pruner run to the budget, then the same fine-tuning. VPNs steps twice per batch, so give the "
    "baselines twice the epochs for an equal number of optimiser steps.\n\n"
    "Prunable (--mode unstructured): every Conv2d and Linear weight, stem and classifier included; BN and "
    "biases never. --mode channel: one score per channel of every coupled group (torch-pruning's dependency "
    "graph; residual streams included, classifier outputs never); the result is physically smaller. "
    "--mode 2:4 (N:M): N of every M input-channel weights in each layer whose input channels divide by M; "
    "the rest stay dense and are listed in the manifest.\n\n"
    "Deviations from the reference code: " + "; ".join(DEVIATIONS) + "."
)


@friendly
def train(
    arch: Annotated[str, typer.Option(help=f"Architecture: {ARCH_SHORT}.")],
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
    from pipelines.stages import pretrain_model
    from vpns_deploy.config import check_numbers
    from vpns_deploy.pretrain import PretrainConfig

    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists", "pass --overwrite or another --out")
    cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    check_numbers(cfg)  # --lr nan/inf/<= 0: one line, before any data is read or epoch trained
    acc = pretrain_model(arch, data, cfg, device, out, reporter(quiet))  # the recipe's pretrain stage
    typer.echo(f"{arch} trained on {data}: test top-1 {acc:.2%} -> {out}")


@friendly
@with_options(MODEL_OPTIONS, SPARSITY, METHOD_OPTIONS, SPEEDUP, TRAINING_OPTIONS, HEAD_OPTIONS, EMPTY_LAYERS)
def compress(
    model: Annotated[Optional[Path], typer.Argument(help="Checkpoint: a state dict (needs --arch) or, with --trust-pickle, a pickled nn.Module. Leave out with --resume.")] = None,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP + " Required unless --resume.")] = None,
    options: dict | None = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<arch>-<method>-s<sparsity>-seed<seed>).")] = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run (its --out directory) with its own settings.")] = None,
    quiet: QuietOpt = False,
) -> None:
    from pipelines.run_dir import DEFAULT_RUNS
    from pipelines.stages import Plan, compress_request, run_plan

    if resume is not None:
        if model is not None:
            raise UserError("pass either MODEL or --resume RUN_DIR, not both",
                            "--resume continues with the settings the run was started with")
        from pipelines.compress_stage import resume_compress

        say(str(resume_compress(resume, reporter(quiet), overwrite=overwrite)))
        return
    if model is None or data is None:
        raise UserError("compress needs MODEL and --data", "e.g. vpns-deploy compress model.pt --data tar:cifar10.tar.gz "
                        "--arch cifar_resnet20 (or --resume RUN_DIR)")
    cfg, arch = compress_config(options), options["arch"]
    if out is None:
        mode_part = "channel-" if cfg.mode == "channel" else ""
        out = DEFAULT_RUNS / f"{(arch or model.stem).replace(':', '-')}-{cfg.method}-{mode_part}{cfg.target_text}-seed{cfg.seed}"

    request = compress_request(model, arch, data, cfg, options["num_classes"], options["trust_pickle"],
                               input_overrides(options))
    run_plan(Plan(out, "compress", request, trust_pickle=options["trust_pickle"], device=cfg.device, announce=False), overwrite,
             reporter(quiet))
    say(str(out))


@friendly
@with_options(MODEL_OPTIONS, METHOD_OPTIONS, TARGET, TRAINING_OPTIONS, HEAD_OPTIONS, ((ReportSection, "latency_budget"),))
def sweep(
    model: Annotated[Path, typer.Argument(help="Checkpoint, as for compress.")],
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    sparsity: Annotated[str, typer.Option(help="Comma-separated targets, one run each (unstructured: of weights; channel: of channels).")] = "0.5,0.7,0.9",
    speedup: Annotated[Optional[str], typer.Option(help="Channel mode: comma-separated speedups instead of --sparsity, e.g. 1.5,2,3.")] = None,
    options: dict | None = None,
    precision: PrecisionOpt = "fp32",
    out: Annotated[Optional[Path], typer.Option(help="Sweep directory: one run per point inside it (default runs/sweep-<arch>-<method>-<mode>).")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """One complete run per target (compress -> export -> report), then the trade-off plots. In full: docs/OPTIONS.md.\f

    Writes <out>/<point>/ run directories, and in <out>: sweep.json, accuracy_vs_sparsity.png,
    pareto.png (top-1 vs ONNX Runtime latency at batch 64, with the Pareto front), and the side-by-side
    report (report.md, report.html, PNGs). Re-running the same command skips finished points and
    resumes an interrupted one.
    """
    from pipelines.run_dir import DEFAULT_RUNS
    from pipelines.sweep import run_sweep

    base = compress_config(options, speedup=floats(speedup, "--speedup")[0] if speedup else None)
    sparsities = None if speedup else floats(sparsity, "--sparsity")
    for s in sparsities or []:
        CompressConfig(sparsity=s)  # one-line error for a value outside (0, 1), before anything runs
    ReportSection(latency_budget=options["latency_budget"])  # likewise for the report's budget
    arch = options["arch"]
    out = out or DEFAULT_RUNS / f"sweep-{(arch or model.stem).replace(':', '-')}-{base.method}-{base.mode.replace(':', 'of')}"
    result = run_sweep(model, arch, data, base, out, sparsities, floats(speedup, "--speedup") if speedup else None,
                       precisions(precision), options["num_classes"], options["trust_pickle"], overwrite,
                       reporter(quiet), inputs=input_overrides(options), latency_budget=options["latency_budget"])
    say(str(result))


@friendly
def run_recipe_cmd(
    recipe: Annotated[Path, typer.Argument(help="A .toml recipe (see recipes/).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run made with other settings.")] = False,
    quiet: Annotated[bool, typer.Option(help=QUIET_HELP)] = False,
) -> None:
    """Run a recipe: pretrain (optional) -> compress -> export -> report.

    Validated before anything runs; stages done earlier (outputs verified, same settings) are skipped and
    an interrupted compress resumes, so re-running is always safe. A [grid] of named variants, e.g.
    { name = "seed9", "compress.seed" = 9 }, makes one run per variant in RUN_OUT/NAME, all validated
    first, each skipped or resumed likewise.
    """
    from pipelines.recipe import load_grid
    from pipelines.stages import run_recipe

    grid = load_grid(recipe)
    for i, variant in enumerate(grid.variants, 1):
        parsed = variant.recipe
        if len(grid.variants) > 1:
            say(f"[{i}/{len(grid.variants)}] {variant.name}")
        ran = run_recipe(parsed, overwrite=overwrite, reporter=reporter(quiet))
        report_json = parsed.out / "report.json"
        if report_json.is_file() and is_rank0() and len(grid.variants) == 1:  # under torchrun: rank 0 alone
            from pipelines.report_record import Report
            from pipelines.report_render import render_table
            from vpns_deploy.progress import out_console

            out_console.print(render_table(Report.read(report_json)))
        say(f"{parsed.out}: {'ran ' + ', '.join(ran) if ran else 'every stage was already done'}")


