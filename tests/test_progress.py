"""Progress: live bars on a terminal, plain per-epoch lines with --quiet or when output is a log."""
from __future__ import annotations

import io

from rich.console import Console

from vpns_deploy.progress import Reporter


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=120), buf


def test_live_bar_only_on_a_terminal_without_quiet():
    assert Reporter(console=_console(True)[0]).progress.disable is False
    assert Reporter(quiet=True, console=_console(True)[0]).progress.disable is True
    assert Reporter(console=_console(False)[0]).progress.disable is True


def test_quiet_still_prints_one_line_per_epoch():
    console, buf = _console(True)
    with Reporter(quiet=True, console=console) as r:
        with r.task("mask 1/1", 3) as bar:
            for _ in range(3):
                bar.advance("loss 1.0")
        r.line("mask 1/1  loss 1.000")
    out = buf.getvalue()
    assert "mask 1/1  loss 1.000" in out and "━" not in out


def test_piped_progress_prints_a_phase_start_with_its_estimate_and_periodic_lines(monkeypatch):
    import vpns_deploy.progress as progress

    console, buf = _console(False)
    reporter = Reporter(console=console)
    reporter.pace = {"forward": 0.5}
    monkeypatch.setattr(progress, "PLAIN_LINE_SECONDS", 0.0)  # every step prints
    with reporter, reporter.task("dense reference", 3, images_per_step=4, kind="forward", announce=True) as bar:
        for _ in range(3):
            bar.advance("")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "dense reference: 3 batches, eta 0:00:06"  # 3 batches x 4 images x 0.5 s
    assert lines[1].startswith("dense reference  1/3  0:00:00 elapsed, eta 0:00:0") and len(lines) == 3


def test_eta_comes_from_measured_steps_once_there_are_some():
    console, _ = _console(True)
    reporter = Reporter(console=console)
    with reporter.task("mask 1/1", 10) as bar:
        assert bar.eta() is None  # no pace and no step yet: unknown, not a guess
        bar.advance()
        assert bar.eta() is not None and bar.eta() >= 0
