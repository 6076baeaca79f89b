"""`report RUN_DIR [RUN_DIR...]`: measure what is not measured yet, then compare side by side.

One run: its report.md/report.json (report_stage) plus the plots and report.html in the run
directory. Several runs: a comparison directory with report.md, comparison.json, the plots and
report.html; each run keeps its own report.json.
"""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from calibration.latency import DEFAULT_BUDGET_S, check_budget
from pipelines import plots
from pipelines.html_report import render_html
from pipelines.artifacts import DENSE_ONNX, MANIFEST, MODEL_ONNX, PLOT_PNGS, REPORT_HTML, REPORT_JSON
from pipelines.manifest import Manifest
from pipelines.report_record import Report
from pipelines.report_render import precision_warnings, render_table, speedup_text, table_rows
from pipelines.report_verdict import verdict_html
from pipelines.run_dir import RunDir, now
from pipelines.stages import Plan, ReportRequest, run_plan
from vpns_deploy.atomic import atomic_write_json, atomic_write_text
from vpns_deploy.errors import UserError
from vpns_deploy.progress import Reporter, out_console

PLOTS = tuple(zip(PLOT_PNGS, ("Test top-1 after every epoch, per stage", "Removed fraction per layer",
                               "ONNX Runtime CPU latency: median (bar) and p90 (whisker)")))


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def _measured(run_dir: Path, data_spec: str | None, remeasure: bool, reporter: Reporter,
              latency_budget: float, trust_pickle: bool) -> tuple[Manifest, Report]:
    """The run's report: the report stage of the one graph, which measures only what is not done yet."""
    if not (Path(run_dir) / MANIFEST).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {MANIFEST})", "pass the --out of a compress run")
    run_plan(Plan(Path(run_dir), "report", announce=False, report=ReportRequest(latency_budget, data_spec, remeasure),
                  trust_pickle=trust_pickle), reporter=reporter)
    run = RunDir.open(run_dir)
    return run.manifest, Report.read(run.verified(REPORT_JSON))


def _draw(runs: list[plots.Run], out: Path) -> list[tuple[str, Path]]:
    drawn = [plots.training_curves(runs, out / PLOTS[0][0]), plots.layer_sparsity(runs, out / PLOTS[1][0]),
             plots.latency_bars(runs, out / PLOTS[2][0])]
    return [(caption, path) for (_, caption), path in zip(PLOTS, drawn)]


def _drawn(run: RunDir) -> bool:
    """report.html and the plots verify and were drawn from the report.json the run holds now."""
    try:
        for name in (REPORT_JSON, REPORT_HTML, *PLOT_PNGS):
            run.verified(name)
        source = run.artifacts[REPORT_JSON]["sha256"]
    except UserError:
        return False
    return all(run.artifacts[name].get("drawn_from") == source for name in (REPORT_HTML, *PLOT_PNGS))


def comparison_rows(runs: list[plots.Run]) -> list[tuple[str, ...]]:
    """One row per measure, one column per run, the dense model of the first run first."""
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.2%}"

    def lat(r: Report, b: str) -> str:  # a run's own dense and compressed graphs, timed together
        return f"{r.latency_ms['dense'][b]['median_ms']:.2f} -> {r.latency_ms['compressed'][b]['median_ms']:.2f} ms"

    first = runs[0][2]
    rows: list[tuple[str, ...]] = [
        ("method / mode", (first.dense_reference or {}).get("label", "dense"), *(f"{r.method} / {r.mode}" for _, _, r in runs)),
        ("sparsity", "0.00%", *(pct(r.sparsity_prunable) for _, _, r in runs)),
        ("top-1, ONNX Runtime (shipped graph)", pct(first.accuracy["dense"]["onnxruntime"]),
         *(pct(r.accuracy["compressed"]["onnxruntime"]) for _, _, r in runs)),
        ("top-1 without prompt (PyTorch)", pct(first.accuracy["dense"]["pytorch"]),
         *(pct(r.accuracy["compressed"]["pytorch_no_prompt"]) for _, _, r in runs)),
        ("parameters (non-zero)", f"{first.counts['dense']['nonzero']:,}",
         *(f"{r.counts['compressed']['nonzero']:,}" for _, _, r in runs)),
        ("MACs per image", f"{first.counts['dense']['macs'] / 1e6:.2f} M",
         *(f"{r.counts['compressed']['macs'] / 1e6:.2f} M" for _, _, r in runs)),
        ("ONNX gzip size", f"{first.files[DENSE_ONNX]['gzip_bytes'] / 1e6:.2f} MB",
         *(f"{r.files[MODEL_ONNX]['gzip_bytes'] / 1e6:.2f} MB" for _, _, r in runs)),
    ]
    for b in first.latency_ms["dense"]:
        rows.append((f"ORT CPU latency, batch {b}: the run's dense -> compressed (median, timed together)", "—",
                     *(lat(r, b) for _, _, r in runs)))
        rows.append((f"speedup, batch {b} [95 % interval] (efficiency)", "1.00x",
                     *(f"{speedup_text(r.speedup[b])} ({r.speedup[b]['efficiency']:.2f})" for _, _, r in runs)))
    for precision in sorted({p for _, _, r in runs for p in r.precision}):
        rows.append((f"top-1, ONNX Runtime {precision}", pct(first.precision.get(precision, {})
                                                             .get("dense", {}).get("onnxruntime")),
                     *(pct(r.precision.get(precision, {}).get("compressed", {}).get("onnxruntime"))
                       for _, _, r in runs)))
    rows.append(("test images", str(first.test_images), *(str(r.test_images) for _, _, r in runs)))
    return rows


def report_runs(run_dirs: list[Path], out: Path | None = None, data_spec: str | None = None,
                remeasure: bool = False, reporter: Reporter | None = None, print_table: bool = True,
                extra_images: list[tuple[str, Path]] | None = None, latency_budget: float = DEFAULT_BUDGET_S,
                trust_pickle: bool = False) -> Path:
    """Returns the directory that holds report.md, the PNGs and report.html.

    One run and no `out`: everything goes into the run directory. Otherwise a comparison in `out`.
    """
    reporter = reporter or Reporter()
    check_budget(latency_budget)  # before the first run is measured
    run_dirs = [Path(p) for p in run_dirs]
    measured = [_measured(p, data_spec, remeasure, reporter, latency_budget, trust_pickle) for p in run_dirs]
    runs = [(label, m, r) for label, (m, r) in zip(_labels(run_dirs), measured)]
    if len(runs) == 1 and out is None:
        run = RunDir.open(run_dirs[0])
        if _drawn(run):  # the pages of the report it holds are drawn and verify: nothing to do
            if print_table:
                out_console.print(render_table(runs[0][2]))
            return run.path
        images = _draw(runs, run.path)
        report = runs[0][2]
        header, rows = ["measure", "dense", "compressed"], table_rows(report)
        title = f"vpns-deploy report: {run_dirs[0].name}"
        notes = precision_warnings(report) + [f"Measured {report.created} on {report.test_images} test images; ONNX Runtime "
                 f"{report.machine.get('onnxruntime-gpu') or report.machine.get('onnxruntime')}, "
                 f"{report.machine['threads']} CPU threads."]
        atomic_write_text(run.file(REPORT_HTML), render_html(title, notes, header, rows, images,
                                                             verdict_html(report, run.manifest)))
        for name in [p.name for _, p in images] + [REPORT_HTML]:
            run.record(name, drawn_from=run.artifacts[REPORT_JSON]["sha256"])
        run.save()
        if print_table:
            out_console.print(render_table(report))
        reporter.line(f"report: {run.file('report.md')}, {run.file(REPORT_HTML)} and "
                      f"{', '.join(p.name for _, p in images)}")
        return run.path
    out = Path(out) if out is not None else run_dirs[0].parent / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    images = (extra_images or []) + _draw(runs, out)
    header = ["measure", f"dense ({runs[0][0]})", *(label for label, _, _ in runs)]
    rows = comparison_rows(runs)
    title = f"vpns-deploy comparison of {len(runs)} runs"
    notes = [f"Runs: {', '.join(str(p) for p in run_dirs)}. Latency: ONNX Runtime on the CPU, median; each run's "
             "graphs are timed together and compared only with each other (runs measured at different times are "
             "not comparable in milliseconds), so runs are compared by their speedups; a speedup whose 95 % "
             "interval holds 1.0 is within noise."]
    md = [f"# {title}", "", notes[0], "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += [""] + [f"![{caption}]({p.name})" for caption, p in images]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_json(out / "comparison.json", {"created": now(), "runs": [str(p) for p in run_dirs],
                                                "header": header, "rows": rows})
    atomic_write_text(out / "report.html", render_html(title, notes, header, rows, images))
    if print_table:
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(escape(h), justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        out_console.print(table)
    reporter.line(f"comparison: {out / 'report.md'}, {out / 'report.html'} and the PNGs beside them")
    return out
