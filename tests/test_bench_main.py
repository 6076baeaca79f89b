"""python -m bench TABLE: each grid table is a recipe plus a summariser that reads the runs' manifest.json.
A tiny digits grid of real runs feeds every summariser; the committed results re-derive from their runs
and the results page shows the committed tables."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bench.__main__ as tables
from bench import accuracy, channel, grid, transfer
from conftest import DIGITS_RECIPE
from pipelines.cli import app
from pipelines.recipe import load_grid
from pipelines.run_dir import source_commit
from vpns_deploy.config import ONE_BATCH_FRACTION
from vpns_deploy.sparsity.methods import get_method

ROOT = Path(tables.__file__).resolve().parents[1]
SUMMARISERS = {"accuracy": accuracy, "channel": channel, "transfer": transfer}
DIGITS = DIGITS_RECIPE + """[grid]
variants = [
  {{ name = "vpns", "compress.seed" = 7 }},
  {{ name = "hydra", "compress.method" = "hydra", "compress.epochs_mask" = 2, "compress.epochs_tune" = 2 }},
]
"""
# the two digits runs under each table's variant names
NAMES = {"accuracy": {"2k-e1-vpns-s0.9-seed7": "vpns", "2k-e1-hydra-s0.9-seed7": "hydra",
                      "2k-e1-vpns-s0.9-seed9": "vpns"},
         "channel": {"e1-vpns-seed7": "vpns", "e1-tp_steps-seed7": "hydra", "e1-vpns-seed9": "vpns"},
         "transfer": {"vpns-s0.9-seed7": "vpns", "hydra-s0.9-seed7": "hydra", "vpns-pad18-s0.9-seed7": "vpns"},
         "prompt": {"vpns-s0.9-seed7": "vpns", "zero-s0.9-seed7": "hydra", "zero-s0.9-seed9": "vpns"}}
NAMES["prompt-budget"] = NAMES["prompt"]


@pytest.fixture(scope="module")
def digits_grid(tmp_path_factory, digits_model) -> Path:
    """Two real runs made by `vpns-deploy run` on a grid recipe: VPNs 1 + 1 and HYDRA 2 + 2 epochs."""
    work = tmp_path_factory.mktemp("grid")
    recipe = work / "digits.toml"
    recipe.write_text(DIGITS.format(out=work / "runs", model=digits_model))
    done = CliRunner().invoke(app, ["run", str(recipe), "--quiet"])
    assert done.exit_code == 0, done.output
    return work / "runs"


def _table_recipe(tmp_path: Path, table: str, runs: Path, digits_model: Path) -> Path:
    """A grid recipe naming the digits runs as `table` names its variants (run folders are links)."""
    out = tmp_path / "runs"
    out.mkdir()
    for name, run in NAMES[table].items():
        (out / name).symlink_to(runs / run, target_is_directory=True)
    variants = ",\n".join(f'  {{ name = "{n}" }}' for n in NAMES[table])
    text = DIGITS.format(out=out, model=digits_model)
    recipe = tmp_path / f"{table}.toml"
    recipe.write_text(text[:text.index("variants = [")] + f"variants = [\n{variants},\n]\n")
    return recipe


@pytest.mark.parametrize("table", SUMMARISERS)
def test_summariser_reads_real_runs_and_writes_json_png_and_markdown(table, tmp_path, digits_grid, digits_model,
                                                                     capsys):
    recipe = _table_recipe(tmp_path, table, digits_grid, digits_model)
    tables.main([table, "--recipe", str(recipe), "--out", str(tmp_path / "results")])
    result = json.loads((tmp_path / "results" / f"{table}.json").read_text())
    assert (tmp_path / "results" / f"{table}.png").stat().st_size > 0
    vpns = json.loads((digits_grid / "vpns" / "manifest.json").read_text())["metrics"]
    hydra = json.loads((digits_grid / "hydra" / "manifest.json").read_text())["metrics"]
    assert result["runs"][next(iter(NAMES[table]))]["top1"] in (vpns["top1_plain"], vpns["top1_prompted"])
    assert result["runs"][next(iter(NAMES[table]))]["optimizer_steps"] == sum(
        e["optimizer_steps"] for e in vpns["epochs"])
    # equal optimiser steps: VPNs 1 + 1 epochs at two passes per batch = HYDRA 2 + 2 at one
    assert len({r["optimizer_steps"] for r in result["runs"].values()}) == 1
    (group,) = result["measured"]
    assert group["commit"] and group["runs"] == list(NAMES[table]) and group["command"].startswith("vpns-deploy run")
    made = json.loads((digits_grid / "vpns" / "manifest.json").read_text())["versions"].get("vpns-deploy commit")
    if source_commit() is not None:  # a git checkout: the run records its code's commit, and the table names it
        assert made and re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", made) and group["commit"] == made
    out = capsys.readouterr().out
    for md in result["markdown"].values():
        assert md in out
    hydra_pct = f"{100 * hydra['top1_plain']:.2f}"
    assert hydra_pct in "\n".join(result["markdown"].values())
    # the same runs again: the record of what measured them is kept
    again = SUMMARISERS[table].main(["--recipe", str(recipe), "--out", str(tmp_path / "results")])
    assert again["measured"] == result["measured"] and again["runs"] == result["runs"]


def test_a_table_missing_runs_names_the_command_and_writes_nothing(tmp_path, digits_grid, digits_model):
    recipe = _table_recipe(tmp_path, "accuracy", digits_grid, digits_model)
    (tmp_path / "runs" / "2k-e1-vpns-s0.9-seed9").unlink()
    with pytest.raises(grid.MissingRuns, match=r"1 of 3 runs .*2k-e1-vpns-s0.9-seed9.*`vpns-deploy run "):
        tables.main(["accuracy", "--recipe", str(recipe), "--out", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()
    partial = accuracy.main(["--recipe", str(recipe), "--out", str(tmp_path / "results"), "--partial"])
    assert partial["missing"] == ["2k-e1-vpns-s0.9-seed9"] and len(partial["runs"]) == 2


def test_list_names_every_table(capsys):
    tables.main(["--list"])
    out = capsys.readouterr().out
    assert all(name in out for name in tables.TABLES)


def test_measurement_tables_print_from_their_json(capsys):
    tables.main(["precision"])
    assert "| compressed-int8 | 87.30 |" in capsys.readouterr().out
    tables.main(["throughput"])
    out = capsys.readouterr().out
    assert "1 process(es):" in out and "2 process(es):" in out and "ResNet-20 epoch, new: train 133.4 s" in out


def test_latency_repeat_measures_in_fresh_processes_and_prints_from_its_json(digits_run, tmp_path, capsys):
    from bench import latency_repeat

    out = tmp_path / "repeat.json"
    result = latency_repeat.main([str(digits_run), "--processes", "2", "--repeats", "1", "--budget", "0.05",
                                  "--out", str(out)])
    assert json.loads(out.read_text()) == result and [m["process"] for m in result["measurements"]] == [0, 1]
    for m in result["measurements"]:
        assert m["ci95"][0] <= m["speedup"] <= m["ci95"][1] and m["rounds"] >= 3 and m["dense_ms"] > 0
    s = result["summary"]
    assert s["min"] <= s["mean"] <= s["max"] and 0 <= s["intervals_holding_the_mean"] <= 2
    assert "2 measurements:" in capsys.readouterr().out
    tables.main(["repeat"])  # the committed measurement
    assert "measurements:" in capsys.readouterr().out


def test_prompt_cost_times_the_graph_with_and_without_the_prompt_and_prints_from_its_json(digits_run, tmp_path,
                                                                                         capsys):
    from bench import prompt_cost

    out = tmp_path / "prompt_cost.json"
    before = {f.name: f.read_bytes() for f in digits_run.iterdir() if f.is_file()}
    result = prompt_cost.main([str(digits_run), "--processes", "1", "--budget", "0.05", "--out", str(out)])
    assert json.loads(out.read_text()) == result and len(result["measurements"]) == 1
    m = result["measurements"][0]
    assert m["dense_ms"] > 0 and m["with_prompt_ms"] > 0 and m["without_prompt_ms"] > 0
    r = m["with_over_without"]
    assert r["ci95"][0] <= r["ratio"] <= r["ci95"][1]
    assert m["speedup_with_prompt"]["speedup"] > 0 and m["speedup_without_prompt"]["speedup"] > 0
    assert "| 0 |" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in digits_run.iterdir() if f.is_file()} == before  # exported in copies
    tables.main(["prompt-cost"])  # the committed measurement
    assert "with / without" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a run without a prompt has none to fold in
        bare = tmp_path / "bare"
        bare.mkdir()
        prompt_cost.main([str(bare)])


def test_show_prints_the_committed_tables_without_runs(capsys):
    tables.main(["floor", "--show"])
    assert "| 50k-e1 (704) | 87.66 | 78.68 | 82.56 | 82.85 | met |" in capsys.readouterr().out


@pytest.mark.parametrize("table", SUMMARISERS)
def test_committed_results_rederive_from_their_runs_and_the_page_shows_them(table):
    saved = json.loads((ROOT / f"bench/results/{table}.json").read_text())
    again = SUMMARISERS[table].summarise(saved["runs"])
    assert again["markdown"] == saved["markdown"] and again["rows"] == saved["rows"]
    names = [v.name for v in load_grid(ROOT / saved["recipe"]).variants]
    assert list(saved["runs"]) == names and sorted(n for g in saved["measured"] for n in g["runs"]) == sorted(names)
    page = (ROOT / "docs/benchmarks.md").read_text()
    for md in saved["markdown"].values():
        for line in md.splitlines()[2:]:
            assert line in page, line
    assert f"`python -m bench {table}`" in page


@pytest.mark.parametrize("table", sorted(set(tables.GRID_TABLES) - {"floor"}))
def test_the_results_page_shows_every_committed_grid_table_with_its_command(table):
    """What `python -m bench TABLE` last wrote is what docs/benchmarks.md shows, row for row."""
    saved = json.loads((ROOT / f"bench/results/{table}.json").read_text())
    page = (ROOT / "docs/benchmarks.md").read_text()
    rows = [line for md in saved["markdown"].values() for line in md.splitlines()[2:] if line.startswith("|")]
    assert rows and [r for r in rows if r not in page] == []
    assert f"`python -m bench {table}`" in page


def _steps_per_batch_epoch(variant) -> float:
    """Optimiser steps of a run in units of one epoch's batches: passes per batch x (stage-1 epochs x the
    fraction of batches stage 1 runs + stage-2 epochs)."""
    c = variant.recipe.compress
    method = get_method(c.method)
    mask = 0 if method.fixed_mask else c.mask_epochs * max(c.mask_fraction, ONE_BATCH_FRACTION)
    return method.passes_per_batch * (mask + c.tune_epochs_effective)


@pytest.mark.parametrize("table,group", [
    ("accuracy", lambda name: re.match(r"\d+k-e\d+", name)[0]),
    ("transfer", lambda name: "all"),
    ("target-transfer", lambda name: "steps3" if name.endswith("-steps3") else "all"),
    ("channel", lambda name: (name.split("-")[0], "half" if "half" in name or "3e" in name else "full")),
])
def test_grid_recipes_give_every_method_equal_optimiser_steps(table, group):
    variants = load_grid(ROOT / f"bench/recipes/{table}.toml").variants
    budgets: dict = {}
    for v in variants:
        budgets.setdefault(group(v.name), []).append((_steps_per_batch_epoch(v), v.name))
    for key, steps in budgets.items():
        low, high = min(steps), max(steps)
        assert high[0] - low[0] <= 0.01 * high[0], (key, low, high)


@pytest.mark.parametrize("table", ["prompt", "prompt-budget"])
def test_prompt_summariser_pairs_each_seed_with_its_control_and_compares_masks(table, tmp_path, digits_grid,
                                                                              digits_model):
    """Real runs under the prompt grids' names (the HYDRA run stands in for the zero-prompt control): the
    paired difference, |P| per stage and the fraction of kept weights on which two masks differ."""
    recipe = _table_recipe(tmp_path, table, digits_grid, digits_model)
    tables.main([table, "--recipe", str(recipe), "--out", str(tmp_path / "results")])
    result = json.loads((tmp_path / "results" / f"{table}.json").read_text())
    vpns = json.loads((digits_grid / "vpns" / "manifest.json").read_text())["metrics"]
    hydra = json.loads((digits_grid / "hydra" / "manifest.json").read_text())["metrics"]
    d = result["vpns_minus_control"]["prompted"]
    assert d["n"] == 1 and d["se"] is None
    assert d["mean"] == pytest.approx(100 * (vpns["top1_prompted"] - hydra["top1_plain"]))
    masks = result["masks"]
    assert masks["control_seed7_vs_seed9"]["fraction_of_kept"] > 0  # HYDRA's mask is not VPNs'
    assert masks["vpns_vs_control_seed7"]["fraction_of_kept"] == pytest.approx(
        masks["control_seed7_vs_seed9"]["fraction_of_kept"], rel=0.2)  # the same two masks, compared both ways
    assert (tmp_path / "results" / f"{table}.png").stat().st_size > 0
    (md,) = result["markdown"].values()
    assert "VPNs prompted minus control" in md and result["table"] == table