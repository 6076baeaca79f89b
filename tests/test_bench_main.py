"""python -m bench TABLE: regenerates a results-page table from committed results without training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import bench.__main__ as tables

COMMITTED = Path(tables.__file__).resolve().parent / "results"


def _copy(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COMMITTED / name, tmp_path / name)
    return tmp_path


def test_list_names_every_table(capsys):
    tables.main(["--list"])
    out = capsys.readouterr().out
    assert all(name in out for name in tables.TABLES)


def test_accuracy_table_is_redrawn_from_its_cells_and_keeps_the_measuring_record(tmp_path, monkeypatch, capsys):
    results = _copy(tmp_path, "accuracy-2026-12-03.json", "floor/50k-e1.json")
    monkeypatch.setattr(tables, "RESULTS", results)
    before = json.loads((results / "accuracy-2026-12-03.json").read_text())
    tables.main(["accuracy"])
    after = json.loads((results / "accuracy-2026-12-03.json").read_text())
    assert after["cells"] == before["cells"]
    assert after["command"] == before["command"] and after["machine"] == before["machine"]
    assert (results / "accuracy-2026-12-03.png").stat().st_size > 0
    assert "| 0.9 | VPNs | 82.85 | 7, 9 |" in capsys.readouterr().out


def test_a_grid_missing_a_cell_is_refused_instead_of_trained(tmp_path, monkeypatch):
    results = _copy(tmp_path, "accuracy-2026-12-03.json", "floor/50k-e1.json")
    path = results / "accuracy-2026-12-03.json"
    saved = json.loads(path.read_text())
    del saved["cells"]["vpns-s0.5-seed7"]
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(tables, "RESULTS", results)
    with pytest.raises(SystemExit, match="vpns-s0.5-seed7"):
        tables.main(["accuracy"])
    assert json.loads(path.read_text()) == saved  # nothing written


def test_precision_table_prints_the_committed_measurements(capsys):
    tables.main(["precision"])
    out = capsys.readouterr().out
    assert "| compressed-int8 | 87.30 |" in out
    assert "| qoperator-per-channel | 98.4 |" in out
