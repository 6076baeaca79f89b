"""Multi-run report (table, markdown, PNGs, self-contained HTML in headless Chromium) and sweep."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium when present (`make test` installs Debian's once, before pytest, where it
    can); tests never install system packages themselves."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("headless Chromium is absent (make test installs Debian's chromium where it has root and apt-get)")
    return found


def _headless(chromium: str, page: Path) -> tuple[str, list[str]]:
    """The DOM after load, and every message the page wrote to the console."""
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, digits_model) -> Path:
    from pipelines.compress_stage import run_compress
    from pipelines.export_stage import run_export
    from vpns_deploy.config import CompressConfig
    from vpns_deploy.progress import Reporter

    out = tmp_path_factory.mktemp("runs") / "digits-channel"
    cfg = CompressConfig(mode="channel", sparsity=0.5, epochs_mask=1, epochs_tune=1, batch_size=64,
                         channel_round_to=4)
    run_compress(digits_model, "digits_cnn", "digits", cfg, out, reporter=Reporter(quiet=True))
    run_export(out, reporter=Reporter(quiet=True))
    return out


def test_report_on_two_runs_writes_table_markdown_pngs_and_html(tmp_path, digits_run, second_run, chromium):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["report", str(digits_run), str(second_run), "--out", str(out), "--latency-budget", "1"])
    assert result.exit_code == 0, result.output
    assert "digits-vpns" in result.stdout and "digits-channel" in result.stdout  # the rich table
    md = (out / "report.md").read_text()
    assert "| top-1, ONNX Runtime (shipped graph) |" in md and "channel" in md
    for name in ("training_curves.png", "layer_sparsity.png", "latency.png"):
        assert (out / name).read_bytes().startswith(PNG), name
        assert f"]({name})" in md
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert all(len(r) == 4 for r in rows)  # measure, dense, two runs

    page = out / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    dom, console = _headless(chromium, page)
    assert console == [], console
    assert '<table id="summary">' in dom and "digits-channel" in dom and "top-1, ONNX Runtime" in dom
    # Each run kept its own measurement.
    assert (digits_run / "report.json").is_file() and (second_run / "report.json").is_file()


def test_report_on_one_run_adds_plots_and_html_to_the_run(digits_run, chromium):
    result = CliRunner().invoke(app, ["report", str(digits_run), "--latency-budget", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((digits_run / "manifest.json").read_text())
    for name in ("report.html", "training_curves.png", "layer_sparsity.png", "latency.png"):
        assert name in manifest["artifacts"], name
    dom, console = _headless(chromium, digits_run / "report.html")
    assert console == [] and dom.index("What ships") < dom.index("MACs per image")


def test_report_opens_with_the_verdict_and_a_snippet_that_runs(digits_run, tmp_path):
    """The first screen: what ships, speedup and top-1 from the report's own numbers, the settings, and
    Python that classifies with the shipped file (run here, against it)."""
    import html
    import re
    import sys

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    assert CliRunner().invoke(app, ["report", str(run), "--latency-budget", "1"]).exit_code == 0
    page = (run / "report.html").read_text()
    report = json.loads((run / "report.json").read_text())
    verdict, table = page.index('id="verdict"'), page.index('id="summary"')
    assert verdict < table
    first = html.unescape(page[verdict:table])
    assert "Ship model.onnx: faster than dense.onnx" in first and f"{report['speedup']['1']['speedup']:.2f}x" in first
    assert f"{report['accuracy']['compressed']['onnxruntime']:.2%}" in first and "digits_cnn" in first
    assert "uint8 NHWC" in first and "0, 1, 2" in first
    code = html.unescape(re.search(r"<pre><code>(.*?)</code></pre>", page, re.S).group(1))
    done = subprocess.run([sys.executable, "-c", code], cwd=run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() in [str(i) for i in range(10)], done.stderr


def test_sweep_runs_every_point_draws_its_plots_and_resumes_as_a_no_op(tmp_path, digits_model):
    out = tmp_path / "sweep"
    args = ["sweep", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--sparsity", "0.5,0.8",
            "--method", "magnitude", "--epochs-mask", "0", "--epochs-tune", "1", "--batch-size", "64",
            "--train-subset", "400", "--latency-budget", "1", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["label"] for p in summary["points"]] == ["s0.5", "s0.8"]
    assert [round(p["sparsity"], 3) for p in summary["points"]] == [0.5, 0.8]
    assert summary["pareto_front"]
    for name in ("accuracy_vs_sparsity.png", "pareto.png", "report.html", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes().startswith(PNG)
    before = (out / "s0.5" / "manifest.json").read_text()
    sweep_before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.stderr.count("done earlier") >= 7  # 3 stages x 2 points, the sweep
    assert (out / "s0.5" / "manifest.json").read_text() == before
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == sweep_before  # nothing redrawn


def test_sweep_rejects_bad_targets_before_running(tmp_path, digits_model):
    base = ["sweep", str(digits_model), "--arch", "digits_cnn", "--data", "digits", "--out", str(tmp_path / "s")]
    bad = CliRunner().invoke(app, base + ["--sparsity", "0.5,1.5"])
    assert bad.exit_code == 2 and "strictly between 0 and 1" in bad.stderr
    bad = CliRunner().invoke(app, base + ["--speedup", "2"])
    assert bad.exit_code == 2 and "--mode channel" in bad.stderr
    bad = CliRunner().invoke(app, base + ["--latency-budget", "0"])
    assert bad.exit_code == 2 and "--latency-budget" in bad.stderr
    assert not (tmp_path / "s").exists()


def test_speedup_front_keeps_points_no_other_beats_on_speed_and_accuracy():
    from pipelines.plots import speedup_front

    points = [(1.0, 90.0), (2.0, 85.0), (1.5, 80.0), (3.0, 70.0), (2.5, 60.0)]
    assert speedup_front(points) == [(1.0, 90.0), (2.0, 85.0), (3.0, 70.0)]
