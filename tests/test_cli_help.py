"""`--help` reads at 80 columns: options first, one or two lines each, nothing cut; the full text of
every option lives in docs/OPTIONS.md, generated from the same sources."""
from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.cli_doc import render

COMMANDS = [[], *([name] for name in typer.main.get_command(app).commands)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_at_80_columns_is_short_and_uncut(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "…" not in result.output  # rich's cut values
    cut = [line for line in lines if line.endswith("...") and not line.startswith("Usage:") and "run_dirs" not in line]
    assert not cut, cut  # click's cut command summaries
    assert max(len(line) for line in lines) <= 80
    params = [p for p in typer.main.get_command(app).commands[command[0]].params] if command else []
    assert len(lines) <= 20 + 3 * len(params), len(lines)  # compress: 97 lines for 38 options
    head = lines[: lines.index("Options:") if "Options:" in lines else len(lines)]
    assert len(head) <= 15, "\n".join(head)  # options come first: the long descriptions are in docs/OPTIONS.md


def test_options_page_is_current():
    page = Path(__file__).resolve().parents[1] / "docs" / "OPTIONS.md"
    assert page.read_text() == render(), "regenerate it: python -m pipelines.cli_doc > docs/OPTIONS.md"
    assert "Deviations from the reference code" in page.read_text()
