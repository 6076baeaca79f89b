"""The layering in docs/ARCHITECTURE.md holds: no package imports one above it (docs/import_graph.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "import_graph.py"


def run_check(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT)], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_tree_imports_only_downwards():
    done = run_check(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vpns_deploy -> []" in done.stdout  # the library imports none of the other three


def test_an_upward_import_fails_the_check(tmp_path: Path):
    for pkg in ("vpns_deploy", "calibration", "export", "pipelines"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "calibration" / "reads_runs.py").write_text("from pipelines.manifest import Manifest\n")
    done = run_check(tmp_path)
    assert done.returncode == 1
    assert "upward import: calibration.reads_runs imports pipelines.manifest" in done.stdout
