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
