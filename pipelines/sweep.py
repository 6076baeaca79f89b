"""`sweep`: one complete run (compress -> export -> report) per target, then the trade-off plots.

Each point is a plan through the stage graph (compress, export, report) into `<out>/<target>`: a
finished point is verified and skipped, an interrupted one resumes from its last epoch, so a sweep can
be stopped and restarted at will. The sweep's own files are skipped the same way: sweep.json records
their fingerprint (stage_keys.stage_fingerprint over the points' report digests) and sha256s.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from calibration.latency import DEFAULT_BUDGET_S
from pipelines import plots
from pipelines.compare import report_runs
from pipelines.artifacts import PLOT_PNGS, REPORT_HTML, REPORT_JSON, REPORT_MD
from pipelines.recipe import ExportSection
from pipelines.report_record import Report
from pipelines.run_dir import now
from pipelines.stage_keys import stage_fingerprint
from pipelines.stages import ExportRequest, Plan, ReportRequest, compress_request, run_plan
from vpns_deploy.distributed import env_rank
from vpns_deploy.atomic import atomic_write_json
from vpns_deploy.config import CompressConfig
from vpns_deploy.data.cache import sha256_file
from vpns_deploy.errors import UserError
from vpns_deploy.models.input_overrides import InputOverrides
from vpns_deploy.progress import Reporter

SWEEP_JSON = "sweep.json"
PARETO_BATCH = "64"  # the serving batch every report times (calibration.latency.LATENCY_BATCHES)
SWEEP_OUTPUTS = ("accuracy_vs_sparsity.png", "pareto.png", REPORT_MD, REPORT_HTML, "comparison.json", *PLOT_PNGS)

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
              inputs: InputOverrides | None = None, latency_budget: float = DEFAULT_BUDGET_S) -> Path:
    """Every point compressed, exported and reported (`latency_budget`: seconds of timed calls per graph),
    then the sweep's plots and side-by-side report."""
    reporter = reporter or Reporter()
    points = point_configs(base, sparsities, speedups)  # every config validated before anything runs
    run_dirs = []
    for i, (name, cfg) in enumerate(points, 1):
        reporter.line(f"sweep point {i}/{len(points)}: {name}")
        plan = Plan(out / name, "sweep", compress_request(model, arch, data, cfg, num_classes, trust_pickle, inputs),
                    ExportRequest(ExportSection(precisions=list(precisions))), ReportRequest(latency_budget), trust_pickle,
                    cfg.device)
        run_plan(plan, overwrite=overwrite, reporter=reporter)
        run_dirs.append(out / name)
    if env_rank() != 0:  # under torchrun the other ranks only trained; rank 0 writes the sweep's files
        return out
    key = stage_fingerprint("sweep", {"mode": base.mode, "method": base.method},
                            {name: sha256_file(d / REPORT_JSON) for (name, _), d in zip(points, run_dirs)})
    if _sweep_done(out, key):
        reporter.line("[sweep] done earlier, outputs verified: skipped")
        return out
    summary, dense = _summary(points, [Report.read(d / REPORT_JSON) for d in run_dirs])
    extra = [("Accuracy vs sparsity (ONNX Runtime, the graph that ships)",
              plots.accuracy_vs_sparsity(summary, dense["top1"], out / "accuracy_vs_sparsity.png")),
             (f"Accuracy vs measured speedup over dense fp32, batch {PARETO_BATCH}, with the Pareto front",
              plots.pareto(summary, dense, out / "pareto.png", PARETO_BATCH))]
    report_runs(run_dirs, out=out, reporter=reporter, extra_images=extra, latency_budget=latency_budget,
                trust_pickle=trust_pickle)
    # sweep.json last, recording the fingerprint and what it drew: the record that the sweep is done
    atomic_write_json(out / SWEEP_JSON, {"created": now(), "mode": base.mode, "method": base.method,
                                         "points": summary, "dense": dense,
                                         "pareto_front": plots.speedup_front(
                                             [(p["speedup"][PARETO_BATCH], p["top1"]) for p in [dense, *summary]]),
                                         "fingerprint": key,
                                         "outputs": {n: sha256_file(out / n) for n in SWEEP_OUTPUTS}})
    return out


def _summary(points: list, reports: list[Report]) -> tuple[list[dict], dict]:
    """Each point's top-1, sparsity, MACs, latency and the speedup of its graph to ship over its own dense
    fp32 graph (report's `shipping`, one interleaved measurement per run), and the dense network's."""
    def shipped(r: Report, b: str) -> dict:
        best = r.shipping["best"][b]
        return {"graph": best, **r.shipping["candidates"][best]["speedup_vs_dense_fp32"][b],
                "top1": r.shipping["candidates"][best]["top1"]}

    summary = [{"label": name, "sparsity": r.sparsity_prunable, "top1": shipped(r, PARETO_BATCH)["top1"],
                "macs": r.counts["compressed"]["macs"],
                "latency_ms": {b: v["median_ms"] for b, v in r.latency_ms["compressed"].items()},
                "ships": {b: shipped(r, b)["graph"] for b in r.shipping["best"]},
                "speedup": {b: shipped(r, b)["speedup"] for b in r.shipping["best"]}}
               for (name, _), r in zip(points, reports)]
    first = reports[0]
    dense = {"top1": first.accuracy["dense"]["onnxruntime"], "sparsity": 0.0, "macs": first.counts["dense"]["macs"],
             "latency_ms": {b: v["median_ms"] for b, v in first.latency_ms["dense"].items()},
             "speedup": {b: 1.0 for b in first.latency_ms["dense"]}}
    return summary, dense


def _sweep_done(out: Path, key: str) -> bool:
    """sweep.json records this fingerprint (the points' report digests) and every file it drew verifies."""
    try:
        record = json.loads((out / SWEEP_JSON).read_text())
        return record.get("fingerprint") == key and all(
            sha256_file(out / n) == record["outputs"][n] for n in SWEEP_OUTPUTS)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
