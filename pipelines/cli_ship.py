"""The commands that ship and measure a run: export (deployment graphs) and report (measurements, one
run or several side by side). Each is the stage of that name in the one stage graph (stages.py): it
skips work whose fingerprint and files verify. Only cli.py imports this module."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipelines.cli_common import RUN_DIR_HELP, PrecisionOpt, RunTrustPickleOpt, friendly, precisions, run_dir_or_latest
from pipelines.cli_options import with_options
from pipelines.recipe import ReportSection
from vpns_deploy.config import DEFAULT_CALIB_IMAGES, DEFAULT_MAX_PRECISION_DROP


@friendly
def export(
    run_dir: Annotated[Optional[Path], typer.Argument(help=RUN_DIR_HELP)] = None,
    prompt: Annotated[Optional[bool], typer.Option("--prompt/--no-prompt", help="Fold the prompt in, or leave it out. Default: what validation decided.", show_default=False)] = None,
    graph_resize: Annotated[bool, typer.Option("--graph-resize", help="Fold the evaluation resize + centre crop into the graph: it takes any H x W.")] = False,
    data: Annotated[Optional[str], typer.Option(help="Override the run's data (for the parity and calibration images).")] = None,
    precision: PrecisionOpt = "fp32",
    calib_images: Annotated[int, typer.Option(help="INT8: training images that calibrate the scales.")] = DEFAULT_CALIB_IMAGES,
    max_precision_drop: Annotated[float, typer.Option(help="fp16/int8 ship only within this many top-1 points of fp32.")] = DEFAULT_MAX_PRECISION_DROP,
    trt: Annotated[bool, typer.Option("--trt", help="Also build TensorRT engines (else one line saying what is missing).")] = False,
    require_trt: Annotated[bool, typer.Option("--require-trt", help="Make a missing GPU/TensorRT an error (exit 2) instead of a note.")] = False,
    trust_pickle: RunTrustPickleOpt = False,
) -> None:
    """Write model.onnx (uint8 NHWC in at the model's input size, or any size with --graph-resize; the prompt
    folded into the preprocessing where it helped on validation; a --head map label map folded in) and dense.onnx.
    manifest.json's export.caller_must_feed states exactly what to feed. In full: docs/OPTIONS.md.\f

    Each graph passes onnx's checker and strict shape inference, then ONNX Runtime must reproduce the
    PyTorch logits on real test images; a graph that fails is never written. fp16/int8 siblings
    (model.fp16.onnx, model.int8.onnx, ...) are compared with fp32 on test images; for N:M runs the
    pattern is read back from the shipped fp32 and int8 weights. The same command again on an unchanged
    run writes nothing; another setting, or a modified graph, exports again.
    """
    from pipelines.export_stage import check_export_options
    from pipelines.recipe import ExportSection
    from pipelines.stages import ExportRequest, Plan, run_plan

    wanted = precisions(precision)
    check_export_options(wanted, calib_images, max_precision_drop)  # named as typed, before any work
    section = ExportSection(prompt, graph_resize, list(wanted), calib_images, trt, max_precision_drop)
    run_plan(Plan(run_dir_or_latest(run_dir), "export", announce=False, export=ExportRequest(section, data, require_trt),
                  trust_pickle=trust_pickle))


@friendly
@with_options(((ReportSection, "latency_budget"),))
def report(
    run_dirs: Annotated[Optional[list[Path]], typer.Argument(help="One or more run directories (default: the latest run). Several: compared side by side.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Override the runs' data.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Several runs: where the comparison goes (default: a 'comparison' folder beside the first run).")] = None,
    remeasure: Annotated[bool, typer.Option(help="Measure again even where the run's report is current (made from these graphs with these settings).")] = False,
    options: dict | None = None,
    trust_pickle: RunTrustPickleOpt = False,
) -> None:
    """Measure dense vs compressed and show it: top-1 (PyTorch, ONNX Runtime in every exported precision),
    parameters, MACs, sizes, ONNX Runtime CPU latency (median, p90 and a 95 % interval, batch 1 and 64,
    bounded by --latency-budget, with progress), speedup with its interval ("within noise" where that
    holds 1.0) and efficiency (latency speedup / MACs ratio), the CPU's instruction sets (AVX2, AVX-512,
    VNNI, AMX) and whether int8 can be faster on it, TensorRT where engines were built. In full: docs/OPTIONS.md.\f

    Writes report.json, report.md, PNG plots (training curves, per-layer sparsity, latency) and a
    self-contained report.html into the run directory; several runs get one comparison of them all.
    A run already measured from its current graphs with the same settings is not measured again unless --remeasure.
    """
    from pipelines.compare import report_runs

    report_runs(run_dirs or [run_dir_or_latest(None)], out=out, data_spec=data, remeasure=remeasure,
                latency_budget=options["latency_budget"], trust_pickle=trust_pickle)
