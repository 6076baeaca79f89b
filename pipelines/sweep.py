"""`sweep`: one complete run (compress -> export -> report) per target, then the trade-off plots.

Each point is a plan through the stage graph (compress, export, report) into `<out>/<target>`: a
finished point is verified and skipped, an interrupted one resumes from its last epoch, so a sweep can
be stopped and restarted at will.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipelines import plots
from pipelines.compare import report_runs
from pipelines.artifacts import REPORT_JSON
from pipelines.recipe import ExportSection
from pipelines.report_record import Report
from pipelines.run_dir import now
from pipelines.stages import ExportRequest, Plan, ReportRequest, compress_request, run_plan
from vpns_deploy.distributed import env_rank
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.config import CompressConfig
from vpns_deploy.errors import UserError
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.progress import Reporter


def point_configs(base: CompressConfig, sparsities: list[float] | None,
                  speedups: list[float] | None) -> list[tuple[str, CompressConfig]]:
    """(directory name, config) per point; speedups only in channel mode; a point given twice is refused."""
    flag, values = ("--speedup", speedups) if speedups else ("--sparsity", sparsities or [])
    names = [f"{v:g}" for v in values]  # the point's directory name: values equal to 6 digits collide
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{flag} lists {', '.join(repeated)} more than once (each value is a whole run)",
                        f"give each {flag} value once")
    if speedups:
        if base.mode != "channel":
            raise UserError("--speedup sweeps need --mode channel", "add --mode channel or sweep --sparsity")
        return [(f"x{v:g}", replace(base, speedup=v)) for v in speedups]
    if base.pattern is not None:
        raise UserError(f"an N:M mode ({base.mode}) has one sparsity; there is nothing to sweep",
                        "run compress --mode 2:4 once, or sweep --mode unstructured/channel")
    return [(f"s{v:g}", replace(base, sparsity=v)) for v in sparsities or []]


def run_sweep(model: Path, arch: str | None, data: str, base: CompressConfig, out: Path,
              sparsities: list[float] | None = None, speedups: list[float] | None = None,
              precisions: tuple[str, ...] = ("fp32",), num_classes: int | None = None,
              trust_pickle: bool = False, overwrite: bool = False, reporter: Reporter | None = None,
              inputs: InputOverrides | None = None) -> Path:
    reporter = reporter or Reporter()
    points = point_configs(base, sparsities, speedups)  # every config validated before anything runs
    run_dirs = []
    for i, (name, cfg) in enumerate(points, 1):
        reporter.line(f"sweep point {i}/{len(points)}: {name}")
        plan = Plan(out / name, "sweep", compress_request(model, arch, data, cfg, num_classes, trust_pickle, inputs),
                    ExportRequest(ExportSection(precisions=list(precisions))), ReportRequest(), trust_pickle, cfg.device)
        run_plan(plan, overwrite=overwrite, reporter=reporter)
        run_dirs.append(out / name)
    if env_rank() != 0:  # under torchrun the other ranks only trained; rank 0 writes the sweep's files
        return out
    reports = [Report.read(d / REPORT_JSON) for d in run_dirs]
    summary = [{"label": name, "sparsity": r.sparsity_prunable, "top1": r.accuracy["compressed"]["onnxruntime"],
                "macs": r.counts["compressed"]["macs"],
                "latency_ms": {b: v["median_ms"] for b, v in r.latency_ms["compressed"].items()}}
               for (name, _), r in zip(points, reports)]
    first = reports[0]
    dense = {"top1": first.accuracy["dense"]["onnxruntime"], "sparsity": 0.0, "macs": first.counts["dense"]["macs"],
             "latency_ms": {b: v["median_ms"] for b, v in first.latency_ms["dense"].items()}}
    extra = [("Accuracy vs sparsity (ONNX Runtime, the graph that ships)",
              plots.accuracy_vs_sparsity(summary, dense["top1"], out / "accuracy_vs_sparsity.png")),
             ("Accuracy vs latency, batch 64, with the Pareto front",
              plots.pareto(summary, dense, out / "pareto.png"))]
    atomic_write_json(out / "sweep.json", {"created": now(), "mode": base.mode, "method": base.method,
                                           "points": summary, "dense": dense,
                                           "pareto_front": plots.pareto_front(
                                               [(p["latency_ms"]["64"], p["top1"]) for p in [dense, *summary]])})
    report_runs(run_dirs, out=out, reporter=reporter, extra_images=extra, trust_pickle=trust_pickle)
    return out
